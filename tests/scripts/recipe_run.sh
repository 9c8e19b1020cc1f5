#!/usr/bin/env bash
# One cell of the recipe matrix: experiment <exp> of the recipe-matrix build, run with --recipe on
# the tiny Llama fixture for a few steps. For 05_evaluate the run evaluated is 04_train_sft's run of
# the same recipe: 05_evaluate --run rebuilds the adapter from the run file alone and must produce
# the trained evaluation's completions, token for token, and the same accuracy.
#   usage: recipe_run.sh <exp> <recipe> <matrix-bin-dir> <source-dir> <scratch-dir>
set -euo pipefail
exp=$1; recipe=$2; bin=$3; src=$4; scratch=$5
id=${recipe//\//_}
mkdir -p "$scratch"
tiny=$src/tests/reference/fixtures/tiny_llama
train=(--model "$tiny" --data "$src/data/arith/train.jsonl" --eval-data "$src/data/arith/test.jsonl" --eval-limit 2
       --eval-max-new-tokens 6 --keep-completions --checkpoint-every 100)
out=$scratch/${exp}_$id.h5
rm -rf "$out" "$out.ckpt"
exe=$bin/${exp}_matrix
echo "recipe $recipe, experiment $exp"
case $exp in
  01_loss_surface)
    "$exe" --recipe "$recipe" --model "$tiny" --data "$src/data/gsm8k/train_first128.jsonl" --limit 1 --grid 2 --max-length 300 --out "$out" ;;
  02_budget_sweep)
    "$exe" --recipe "$recipe" "${train[@]}" --limit 2 --val-limit 1 --prompts 2 --group 2 --max-new-tokens 6 --max-steps 1 --lrs 1e-2 --out "$out" ;;
  03_train_grpo)
    "$exe" --recipe "$recipe" "${train[@]}" --limit 4 --prompts 2 --group 2 --max-new-tokens 6 --max-steps 2 --lr 1e-2 --out "$out" ;;
  04_train_sft)
    "$exe" --recipe "$recipe" "${train[@]}" --limit 4 --batch 2 --micro-batch 2 --max-steps 2 --lr 5e-2 --max-length 300 --out "$out" ;;
  05_evaluate)
    run=$scratch/04_train_sft_$id.h5
    [ -f "$run" ] || { echo "FAIL: $run is missing (recipe_04_train_sft_$id must run first)"; exit 1; }
    "$exe" --run "$run" --model "$tiny" --data "$src/data/arith/test.jsonl" --limit 2 --max-new-tokens 6 --keep-completions --out "$out"
    /usr/bin/python3 - "$run" "$out" <<'PY'
import sys, h5py
run, ev = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
a, b = run["eval/trained"], ev["trained"]
ca, cb = [s.decode() if isinstance(s, bytes) else s for s in a["completions"][()]], [s.decode() if isinstance(s, bytes) else s for s in b["completions"][()]]
if ca != cb or list(a["correct"][()]) != list(b["correct"][()]):
    print("FAIL: 05_evaluate --run does not reproduce the run's trained evaluation:", ca, cb); sys.exit(1)
if list(run["theta_final"][()]) != list(ev["theta"][()]):
    print("FAIL: theta differs"); sys.exit(1)
print("trained completions reproduced:", len(ca))
PY
    ;;
  *) echo "FAIL: unknown experiment $exp"; exit 1 ;;
esac
echo "recipe run ok"
