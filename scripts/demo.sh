#!/usr/bin/env bash
# `make demo`: the main job end to end on this machine, offline, in one folder.
#   generate a dataset (or use DATA) -> prepare the cache -> create a local sweep from sweeps/debug.yaml
#   -> two CPU agents train its runs -> status table -> post-process, evaluate, predict with the best run
#   -> sweep report -> where everything is.
# Usage: scripts/demo.sh DEMO_DIR [DATA_DIR]   (the Makefile puts the project's venv first on PATH)
set -euo pipefail

demo_dir=${1:-demo}
data_arg=${2:-}
mkdir -p "$demo_dir"
demo_dir=$(cd "$demo_dir" && pwd)
root="$demo_dir/runs"
export HARNESS_ROOT="$root"
# No W&B account is needed: runs log offline and can be uploaded later with `wandb sync`.
export WANDB_MODE="${WANDB_MODE:-offline}"
export WANDB_SILENT=true

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
started=$(date +%s)

if [ -n "$data_arg" ]; then
    data_dir=$(cd "$data_arg" && pwd)
    step "Using the challenge data in $data_dir"
else
    data_dir="$demo_dir/data"
    step "Generating a dataset in the challenge's layout: $data_dir"
    if [ -f "$data_dir/train.csv" ]; then
        echo "already there (delete $data_dir to regenerate)"
    else
        harness synth "$data_dir" --images 64 --test-images 8 --seed 0
    fi
fi

step "Preparing the 64x96 cache (decode once, resize once)"
harness prepare "$data_dir" --size 64x96

step "Exploring the data (plots in $demo_dir/eda)"
harness eda "$data_dir" --out "$demo_dir/eda"

step "Creating a local sweep from sweeps/debug.yaml (no W&B server needed)"
# debug.yaml is sized for tests; the demo trains a little longer (whole epochs, 8 of them) so the
# pictures show a model that learned something. Each run still takes under a minute on 2 cores.
sweep_id=$(harness sweep create sweeps/debug.yaml --root "$root" --name demo --set data_dir="$data_dir" \
    --set epochs=8 --set steps_per_epoch=0 --set validation_steps=0)
echo "sweep: $sweep_id"

step "Launching two CPU agents (one run each at a time; Ctrl-C checkpoints and stops them)"
python -m harness.launch --gpus none --agents 2 --sweep "$sweep_id" --root "$root"

step "Sweep status"
harness status --sweep "$sweep_id" --root "$root"

best_dir=$(harness status --sweep "$sweep_id" --root "$root" --best)
echo "best run: $best_dir"

step "Post-processing the best run (per-class threshold and minimum component size)"
harness postprocess "$best_dir"

step "Evaluating the best run (plain vs augmented, raw vs post-processed, pictures)"
harness evaluate "$best_dir" --tta flips

step "Writing a challenge-format submission for the test images"
harness predict "$best_dir" --images "$data_dir/test_images" \
    --sample-submission "$data_dir/sample_submission.csv" --out "$demo_dir/submission.csv"

step "Sweep report (best runs, parallel coordinates, parameter importance)"
harness sweep report --sweep "$sweep_id" --root "$root"

elapsed=$(( $(date +%s) - started ))
cat <<EOF

== Done in ${elapsed}s. Where everything is:
  data              $data_dir
  sweep store       $root/sweeps.db            (harness status --sweep $sweep_id --root $root)
  runs              $root/$sweep_id/<run_id>/  (config.json, metrics.jsonl, summary.json, best.keras, checkpoint/)
  best run          $best_dir
  its pictures      $best_dir/plots/
  sweep report      $root/$sweep_id/report/
  submission        $demo_dir/submission.csv
  data plots        $demo_dir/eda/

  TensorBoard on the whole sweep (scalars + HParams):
      tensorboard --logdir $root/$sweep_id
  Upload the offline W&B runs later, from a machine with a login:
      wandb sync $root/$sweep_id/*/wandb/offline-run-*
EOF
