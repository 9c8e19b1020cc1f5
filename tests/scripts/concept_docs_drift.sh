#!/usr/bin/env bash
# tests/scripts/concept_docs_drift.sh SOURCE_DIR: scripts/concept-docs --check must notice a header
# table that changed without its pages: in a copy of the docs and headers, one row of the TieStrategy
# table is edited; --check must exit 1 naming docs/concepts/TieStrategy.md, and after a rewrite
# (scripts/concept-docs) the page must carry the edited row and --check pass again.
set -euo pipefail
src="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/scripts" "$work/docs"
cp "$src/scripts/concept-docs" "$work/scripts/"
cp -r "$src/docs/concepts" "$work/docs/"
cp "$src/README.md" "$work/"
cp -r "$src/include" "$work/"
python3 "$work/scripts/concept-docs" --check  # the copy starts current
sed -i 's/every one non-empty /every one non-empty (drift test) /' "$work/include/tinylora/tying/concepts.hpp"
grep -q "(drift test)" "$work/include/tinylora/tying/concepts.hpp" || { echo "the drift edit did not apply"; exit 1; }
if out="$(python3 "$work/scripts/concept-docs" --check 2>&1)"; then
  echo "concept-docs --check passed on a stale page:"; echo "$out"; exit 1
fi
echo "$out"
grep -q "docs/concepts/TieStrategy.md" <<<"$out" || { echo "the message does not name the stale page"; exit 1; }
python3 "$work/scripts/concept-docs"
grep -q "(drift test)" "$work/docs/concepts/TieStrategy.md" || { echo "the rewrite did not carry the edited row"; exit 1; }
python3 "$work/scripts/concept-docs" --check
echo "concept-docs: drift detected and repaired"
