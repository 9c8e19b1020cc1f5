#!/usr/bin/env bash
# A training run killed with SIGKILL and resumed writes the same HDF5 file as a run that never
# stopped. Three runs of the same experiment and options:
#   full:    uninterrupted;
#   killed:  SIGKILL from inside right after step 2 is logged, before its checkpoint (the step
#            must be redone from the checkpoint of step 1), then resumed;
#   stopped: SIGKILL from outside as soon as the second checkpoint appears (mid-step), then resumed.
# Every dataset and attribute must be equal, except wall-clock timings.
#   usage: kill_resume.sh <scratch-dir> <experiment> [options...]
set -euo pipefail
dir=$1; exe=$2; shift 2
rm -rf "$dir"; mkdir -p "$dir"
echo "== full run"
"$exe" "$@" --out "$dir/full.h5" > "$dir/full.log"
echo "== killed after step 2 is logged"
set +e
"$exe" "$@" --out "$dir/killed.h5" --die-at-step 2 > "$dir/killed-1.log" 2>&1
rc=$?
set -e
if [ "$rc" -ne 137 ]; then echo "FAIL: expected the run to die by SIGKILL (exit 137), got $rc"; cat "$dir/killed-1.log"; exit 1; fi
"$exe" "$@" --out "$dir/killed.h5" > "$dir/killed-2.log"
grep -q "resuming from the checkpoint after step 2 " "$dir/killed-2.log" || { echo "FAIL: the resumed run did not start from step 2's checkpoint"; cat "$dir/killed-2.log"; exit 1; }
echo "== killed from outside once the second checkpoint exists"
"$exe" "$@" --out "$dir/stopped.h5" > "$dir/stopped-1.log" 2>&1 &
pid=$!
for _ in $(seq 1 6000); do
  [ -d "$dir/stopped.h5.ckpt/step-000000002" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.01
done
kill -KILL "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
"$exe" "$@" --out "$dir/stopped.h5" > "$dir/stopped-2.log"
grep -q "resuming from the checkpoint" "$dir/stopped-2.log" || { echo "FAIL: the externally killed run did not resume from a checkpoint"; exit 1; }
echo "== comparing"
/usr/bin/python3 "$(dirname "$0")/compare_h5.py" "$dir/full.h5" "$dir/killed.h5" "$dir/stopped.h5"
