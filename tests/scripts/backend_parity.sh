#!/usr/bin/env bash
# The same experiment built on two backends writes the same results: both run with the same options,
# then every dataset and attribute is compared within a relative tolerance (compare_h5.py --rtol),
# skipping wall-clock timings and the attributes that name the backend (run_identity holds the recipe).
#   usage: backend_parity.sh <scratch-dir> <rtol> <experiment-a> <experiment-b> [options...]
set -euo pipefail
dir=$1; rtol=$2; a=$3; b=$4; shift 4
rm -rf "$dir"; mkdir -p "$dir"
echo "== $(basename "$a")"
"$a" "$@" --out "$dir/a.h5" | tail -n 3
echo "== $(basename "$b")"
"$b" "$@" --out "$dir/b.h5" | tail -n 3
echo "== comparing"
/usr/bin/python3 "$(dirname "$0")/compare_h5.py" --rtol "$rtol" --ignore run_identity --ignore recipe --ignore recipe_adapter --ignore backend "$dir/a.h5" "$dir/b.h5"
