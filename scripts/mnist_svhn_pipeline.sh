#!/usr/bin/env bash
# The MNIST–SVHN experiment end to end: prepare pairs -> digit classifiers -> train -> evaluate -> swap grids.
#   scripts/mnist_svhn_pipeline.sh [CONFIG] [key=value ...]
# Environment: MMVAE (command, default "mmvae"), DATA (prepared folder, default data/mnist_svhn),
#   RAW (MNIST IDX folder, default: the prepare command's default), SVHN (real|synthetic|auto, default auto),
#   RUN (run folder, default runs/<config name>), DEVICE (cpu|cuda, default cpu), CLF_EPOCHS (default 4).
set -euo pipefail
CONFIG=${1:-configs/mnist_svhn_quick.yaml}
shift || true
MMVAE=${MMVAE:-mmvae}
DATA=${DATA:-data/mnist_svhn}
SVHN=${SVHN:-auto}
DEVICE=${DEVICE:-cpu}
RUN=${RUN:-runs/$(basename "$CONFIG" .yaml)}
RAW_ARG=()
[ -n "${RAW:-}" ] && RAW_ARG=(--raw "$RAW")

if [ ! -f "$DATA/manifest.json" ]; then
  $MMVAE prepare mnist-svhn "${RAW_ARG[@]}" --svhn "$SVHN" --dm 30 --seed 0 --out "$DATA"
fi
if [ ! -f "$DATA/classifiers/classifiers.json" ]; then
  $MMVAE classifiers "$DATA" --epochs "${CLF_EPOCHS:-4}" --device "$DEVICE"
fi
$MMVAE train "$CONFIG" "data.path=$DATA" "train.device=$DEVICE" "$@" --run-dir "$RUN"
$MMVAE evaluate "$RUN" --device "$DEVICE"
$MMVAE swap "$RUN" --device "$DEVICE"
