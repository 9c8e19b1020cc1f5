#!/usr/bin/env bash
# tests/scripts/include_arrows_cycle.sh SOURCE_DIR: scripts/include-arrows must reject an arrow that
# points up. In a copy of the headers, io/gguf.hpp (a file format) is made to include
# model/config.hpp (the io <-> model cycle of the past); the check must exit 1 naming the file,
# the line and both folders, and a new top-level folder in no layer must be reported as well.
set -euo pipefail
src="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$src/include" "$work/"
python3 "$src/scripts/include-arrows" --root "$work/include"  # the copy starts clean
sed -i '0,/#include "tinylora\/core\/error.hpp"/s//#include "tinylora\/core\/error.hpp"\n#include "tinylora\/model\/config.hpp"/' \
  "$work/include/tinylora/io/gguf.hpp"
grep -q 'tinylora/model/config.hpp' "$work/include/tinylora/io/gguf.hpp" || { echo "the edit did not apply"; exit 1; }
if out="$(python3 "$src/scripts/include-arrows" --root "$work/include" 2>&1)"; then
  echo "include-arrows passed an upward arrow:"; echo "$out"; exit 1
fi
echo "$out"
grep -q 'tinylora/io/gguf.hpp:[0-9]*: io (layer 7) includes tinylora/model/config.hpp of model' <<<"$out" ||
  { echo "the message does not name the file, line and folders"; exit 1; }
cp "$src/include/tinylora/io/gguf.hpp" "$work/include/tinylora/io/gguf.hpp"
mkdir -p "$work/include/tinylora/newfolder"
printf '#pragma once\n#include "tinylora/core/error.hpp"\n' > "$work/include/tinylora/newfolder/x.hpp"
if out="$(python3 "$src/scripts/include-arrows" --root "$work/include" 2>&1)"; then
  echo "include-arrows passed a folder in no layer:"; echo "$out"; exit 1
fi
grep -q "'newfolder' under tinylora/ is in no layer" <<<"$out" || { echo "$out"; echo "the unknown folder is not named"; exit 1; }
echo "include-arrows: the upward arrow and the unlayered folder were both rejected"
