#!/usr/bin/env bash
# The robot ablation (issue 12, item 5): vision only / force only / no proprio / all, each trained at the same
# budget (the config's train.max_steps and batch size, or the overrides given), evaluated with the robot metrics,
# then one markdown table (RUNS/ablation.md).
#   scripts/robot_ablation.sh [CONFIG] [key=value ...]
# Environment: MMVAE (command, default "mmvae"), PYTHON (default python), DATA (prepared folder, default
#   data/robot_sim), RUNS (default runs/robot_ablation), DEVICE (cpu|cuda, default cpu), VARIANTS (default
#   "all vision_only force_only no_proprio"), EVAL_ARGS (extra `mmvae evaluate` options, default "--iwae-samples 0").
set -euo pipefail
CONFIG=${1:-configs/vision_touch_quick.yaml}
shift || true
MMVAE=${MMVAE:-mmvae}
PYTHON=${PYTHON:-python}
DATA=${DATA:-data/robot_sim}
RUNS=${RUNS:-runs/robot_ablation}
DEVICE=${DEVICE:-cpu}
VARIANTS=${VARIANTS:-all vision_only force_only no_proprio}
EVAL_ARGS=${EVAL_ARGS:---iwae-samples 0}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$RUNS"
done_runs=()
for v in $VARIANTS; do
  "$PYTHON" "$HERE/robot_ablation.py" config "$CONFIG" "$v" "$RUNS/$v.yaml"
  $MMVAE train "$RUNS/$v.yaml" "data.path=$DATA" "train.device=$DEVICE" "$@" --run-dir "$RUNS/$v"
  # shellcheck disable=SC2086
  "$PYTHON" "$HERE/robot_ablation.py" evaluate "$RUNS/$v" --device "$DEVICE" $EVAL_ARGS
  done_runs+=("$RUNS/$v")
done
"$PYTHON" "$HERE/robot_ablation.py" table "${done_runs[@]}" | tee "$RUNS/ablation.md"
