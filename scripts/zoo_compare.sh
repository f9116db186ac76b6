#!/usr/bin/env bash
# The model zoo on MNIST–SVHN at one shared budget (issue 13): every family with the reference nets of
# configs/mnist_svhn_quick.yaml, trained for the same number of steps, evaluated with the same limits, then one
# markdown table (scripts/zoo_table.py) from the run folders.
#
#   scripts/zoo_compare.sh [NAME ...]        (from the repository root; default: every name in FAMILIES)
#   scripts/zoo_compare.sh path/to/X.yaml ...   any config, run as $OUT/X (e.g. configs/disentangle/*.yaml)
#
# For each NAME it runs the commands a user would:
#   mmvae train CONFIG data.path=$DATA train.device=$DEVICE train.max_steps=$STEPS [K override] --run-dir $OUT/NAME
#   mmvae evaluate $OUT/NAME --device $DEVICE --limit $EVAL_LIMIT --generative-limit $GEN_LIMIT \
#       --probe-train $PROBE_TRAIN --iwae-samples $IWAE_SAMPLES --iwae-limit $IWAE_LIMIT
# and records the wall time of both commands in $OUT/NAME/zoo_times.json (the training loop's own seconds are
# in $OUT/NAME/summary.json, "seconds"). A NAME whose eval/metrics.json exists is skipped (delete its folder to
# redo it); one with checkpoints but no evaluation is resumed (`mmvae train --resume`).
# Finally: python scripts/zoo_table.py $OUT/NAME ... > $OUT/table.md, printed.
#
# Every setting below can be given in the environment, e.g.  STEPS=500 K_CPU=2 scripts/zoo_compare.sh mvae dmvae
# Defaults: STEPS=2000 (the quick config's 7000 steps take ~14 min on 2 cores); the evaluation limits keep each
# `mmvae evaluate` under about a minute on 2 CPU cores (measured ~45 s on one busy core with the reference nets).
set -euo pipefail

STEPS=${STEPS:-2000}                 # train.max_steps of every run: the shared budget
K_CPU=${K_CPU:-4}                    # K of mmvae / mmvae_plus (their configs: 30 / 10, very slow on a CPU)
EVAL_LIMIT=${EVAL_LIMIT:-2000}       # --limit: test samples for loss terms (also caps the two below)
GEN_LIMIT=${GEN_LIMIT:-2000}         # --generative-limit: test pairs for coherence/swap, prior draws for joint
PROBE_TRAIN=${PROBE_TRAIN:-2000}     # --probe-train: training samples the linear probes are fitted on
IWAE_SAMPLES=${IWAE_SAMPLES:-256}    # --iwae-samples: K of the IWAE estimate
IWAE_LIMIT=${IWAE_LIMIT:-100}        # --iwae-limit: test samples of the IWAE estimate
DATA=${DATA:-data/mnist_svhn}        # prepared MNIST–SVHN folder (with its classifiers)
OUT=${OUT:-runs/zoo}                 # parent of the run folders
DEVICE=${DEVICE:-cpu}
MMVAE=${MMVAE:-mmvae}                # the command (e.g. MMVAE="python -m mmvae.cli")
PYTHON=${PYTHON:-python3}            # runs the table script (needs PyYAML)
TABLE=${TABLE:-zoo_table.py}         # the table script in scripts/ (disentangle_table.py for configs/disentangle)

# name -> config; the two factorized rows: with its label head (the quick config as is) and without.
FAMILIES=(factorized factorized_unsupervised mvae mmvae mopoe dmvae mmvae_plus)
config_of() {
  case "$1" in
    factorized) echo configs/mnist_svhn_quick.yaml ;;
    factorized_unsupervised) echo configs/zoo/factorized_unsupervised.yaml ;;
    mvae|mmvae|mopoe|dmvae|mmvae_plus) echo "configs/zoo/$1.yaml" ;;
    *.yaml) [ -f "$1" ] && echo "$1" ;;
    *) return 1 ;;
  esac
}
# Extra overrides of a name (K for the K-sample objectives).
overrides_of() {
  case "$1" in
    mmvae|mmvae_plus) echo "model.family_options.K=$K_CPU" ;;
    *) echo "" ;;
  esac
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -f configs/mnist_svhn_quick.yaml ]; then
  echo "zoo_compare: run it from the repository root (the configs are named configs/...)" >&2
  exit 2
fi
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=("${FAMILIES[@]}")
for name in "${NAMES[@]}"; do
  config_of "$name" >/dev/null || { echo "zoo_compare: unknown name '$name'; known: ${FAMILIES[*]} or an existing CONFIG.yaml" >&2; exit 2; }
done

if [ ! -f "$DATA/manifest.json" ]; then
  echo "zoo_compare: no prepared MNIST–SVHN data in $DATA; prepare it with" >&2
  echo "  $MMVAE prepare mnist-svhn --svhn auto --dm 30 --seed 0 --out $DATA" >&2
  exit 2
fi
if [ ! -f "$DATA/classifiers/classifiers.json" ]; then
  echo "zoo_compare: $DATA has no digit classifiers (coherence is scored with them); train them with" >&2
  echo "  $MMVAE classifiers $DATA" >&2
  exit 2
fi

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

mkdir -p "$OUT"
RUNS=()
for name in "${NAMES[@]}"; do
  run="$OUT/$(basename "$name" .yaml)"
  RUNS+=("$run")
  if [ -f "$run/eval/metrics.json" ]; then
    echo "== $name: $run is already trained and evaluated (delete the folder to redo it)"
    continue
  fi
  config=$(config_of "$name")
  read -r -a extra <<< "$(overrides_of "$name")"
  resumed=false
  started=$(now)
  if [ -d "$run/checkpoints" ]; then
    echo "== $name: resuming $run"
    resumed=true
    $MMVAE train --resume --run-dir "$run"
  else
    echo "== $name: $MMVAE train $config data.path=$DATA train.device=$DEVICE train.max_steps=$STEPS ${extra[*]} --run-dir $run"
    $MMVAE train "$config" "data.path=$DATA" "train.device=$DEVICE" "train.max_steps=$STEPS" ${extra[@]+"${extra[@]}"} --run-dir "$run"
  fi
  trained=$(now)
  $MMVAE evaluate "$run" --device "$DEVICE" --limit "$EVAL_LIMIT" --generative-limit "$GEN_LIMIT" \
    --probe-train "$PROBE_TRAIN" --iwae-samples "$IWAE_SAMPLES" --iwae-limit "$IWAE_LIMIT"
  done_at=$(now)
  printf '{"name": "%s", "config": "%s", "steps": %s, "k_cpu": %s, "resumed": %s, "train_wall_seconds": %s, "evaluate_wall_seconds": %s}\n' \
    "$name" "$config" "$STEPS" "$K_CPU" "$resumed" "$(elapsed "$started" "$trained")" "$(elapsed "$trained" "$done_at")" \
    > "$run/zoo_times.json"
  echo "== $name: train $(elapsed "$started" "$trained") s, evaluate $(elapsed "$trained" "$done_at") s (wall)"
done

"$PYTHON" "$HERE/$TABLE" "${RUNS[@]}" | tee "$OUT/table.md"
echo "wrote $OUT/table.md"
