#!/usr/bin/env bash
# Everything issue 16 asks of a GPU, as one command that fits a device lease: the GPU tests, the training-step
# benchmark (captured whole step against the plain pipeline, with profiles), then the full-budget MNIST–SVHN run
# with whatever time is left, its evaluation and swap grids. Every figure and file goes under $OUT.
# The data are prepared on the CPU in the background while the GPU tests and the benchmark run. The full run's
# own timing gives the epoch time at batch 128 on the real prepared pairs (logged as "epoch time"), so the
# benchmark skips its separate full-epoch run.
#
#   Here, once (pack what the device machine lacks: pydantic's wheels, the MNIST files):
#       scripts/gpu_session.sh pack
#   On the device machine (the `run` tool; carry .whl and .gpu_carry):
#       scripts/gpu_session.sh run
#   Here, without a GPU, the same stages at toy sizes (checks the script, not the figures):
#       DEVICE=cpu SMOKE=1 OUT=/tmp/gpu_out scripts/gpu_session.sh run
#
# Environment (run):
#   OUT        output folder (default: gpu_out); the device tool returns at most 8 files, so the run's outputs
#              are packed into one archive, full_run.tar.gz
#   STAGES     any of "env tests bench full", in that order (default: all four)
#   TOTAL_S    wall-clock budget of the whole command in seconds (default 570: a 600 s command limit, less margin);
#              the full run trains until TOTAL_S - EVAL_S and is then evaluated from its newest checkpoint
#   EVAL_S     seconds kept for the evaluation and swap grids (default 110)
#   TESTS      pytest arguments of the tests stage (default: tests/test_gpu.py -k captured)
#   TESTS_S, BENCH_S   limits of those stages (default 150 and 160)
#   FULL_OVERRIDES     extra key=value overrides of the full run (e.g. train.max_steps=100000)
#   GRAPH_OVERRIDES    how the full run is sped up (default on cuda: train.cuda_graph=true train.compile=true); if
#              that run fails before its first checkpoint, the script says so and retries with
#              train.compile_mode=reduce-overhead (the path measured before), in RUN_reduce_overhead
#   BENCH_ARGS replaces the benchmark's variant and batch arguments
#   DEVICE     cuda (default) or cpu; SMOKE=1 shrinks every stage
#   PYTHON     interpreter (default python3; the device image's python3 holds torch)
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}

if [ "$MODE" = pack ]; then
  set -e
  # The device image has torch, numpy, h5py, safetensors, matplotlib, scipy, scikit-learn, transformers; it lacks
  # pydantic (mmvae's configs; wandb too, which the run switches off). Its python is 3.12. The wheels match
  # pyproject.toml's pins.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.8.0 typing-inspection==0.4.5
  mkdir -p .gpu_carry/mnist
  cp ../shared/data/mnist/*.gz ../shared/data/mnist/MD5SUMS.txt .gpu_carry/mnist/  # ../shared does not travel
  du -sh .whl .gpu_carry
  echo 'now: run(command="scripts/gpu_session.sh run", carry=[".whl", ".gpu_carry"], timeout_s=600)'
  exit 0
fi
[ "$MODE" = run ] || { echo "gpu_session.sh: unknown mode '$MODE'; expected pack or run" >&2; exit 2; }

OUT=${OUT:-gpu_out}
STAGES=${STAGES:-"env tests bench full"}
TOTAL_S=${TOTAL_S:-570}
EVAL_S=${EVAL_S:-110}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
PYTHON=${PYTHON:-python3}
for s in $STAGES; do
  case "$s" in env|tests|bench|full) ;; *) echo "gpu_session.sh: unknown stage '$s' in STAGES; expected env, tests, bench, full" >&2; exit 2;; esac
done
if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_session.sh: DEVICE=cuda but $PYTHON sees no CUDA device here (on a CPU: DEVICE=cpu SMOKE=1)" >&2
  exit 2
fi
mkdir -p "$OUT"
LOG="$OUT/log.txt"
log() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG"; }
left() { echo $(( TOTAL_S - SECONDS )); }
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { log "installing the carried wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MMVAE=("$PYTHON" -m mmvae.cli)

stage() { [[ " $STAGES " == *" $1 "* ]]; }

DATA=${DATA:-/tmp/mnist_svhn}
RUN=${RUN:-/tmp/runs/mnist_svhn_full}
PREPARE_PID=
if stage full && [ ! -f "$DATA/manifest.json" ]; then  # CPU work, in the background while the GPU is busy
  sizes=()
  [ "$SMOKE" = 1 ] && sizes=(--svhn-train-size 2000 --svhn-test-size 500)
  log "preparing $DATA in the background"
  "${MMVAE[@]}" prepare mnist-svhn --raw .gpu_carry/mnist --svhn auto "${sizes[@]}" --dm 30 --seed 0 --out "$DATA" \
    >"$OUT/prepare.txt" 2>&1 &
  PREPARE_PID=$!
fi

if stage env; then
  log "stage env"
  { nvidia-smi 2>&1 | head -15; "$PYTHON" -c "import torch, sys; print(sys.version.split()[0], torch.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"; nproc; git log --oneline -1; } >>"$LOG" 2>&1
fi

if stage tests; then
  # Default: the captured-step tests (new). TESTS="tests/test_gpu.py tests/test_train_graph.py" runs every GPU test
  # (the others passed on an H100 before; they cost more compile time).
  log "stage tests (limit ${TESTS_S:-150} s): ${TESTS:-tests/test_gpu.py -k captured}"
  # shellcheck disable=SC2086
  timeout "${TESTS_S:-150}" "$PYTHON" -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_gpu.py -k captured} \
    >"$OUT/tests.txt" 2>&1
  log "tests exit $? : $(tail -1 "$OUT/tests.txt")"
fi

if stage bench; then
  if [ "$SMOKE" = 1 ]; then
    default_bench="--batches 128 --variants graph --blocks 2 --per-block 1 --warmup 1 --no-epoch"
  else
    # The captured step against the baseline at both sizes. BENCH_ARGS can add compile:reduce-overhead, the previous
    # best (docs/bench_train.md), at about 50 s more.
    default_bench="--batches 128,8192 --variants compile+graph --no-epoch --child-timeout 90"
  fi
  log "stage bench (limit ${BENCH_S:-160} s)"
  # shellcheck disable=SC2086
  timeout "${BENCH_S:-160}" "$PYTHON" scripts/bench_train.py --device "$DEVICE" ${BENCH_ARGS:-$default_bench} --profile \
    --out "$OUT/bench_gpu.json" >"$OUT/bench.txt" 2>&1
  log "bench exit $?"
  grep -E "^\||x; step time|reference matmul" "$OUT/bench.txt" >>"$LOG"
fi

if stage full; then
  if [ -n "$PREPARE_PID" ]; then
    log "stage full: waiting for the data"
    wait "$PREPARE_PID" || { log "prepare failed: $(tail -2 "$OUT/prepare.txt")"; exit 1; }
    tail -2 "$OUT/prepare.txt" >>"$LOG"
  fi
  if [ ! -f "$DATA/classifiers/classifiers.json" ]; then
    "${MMVAE[@]}" classifiers "$DATA" --epochs "$([ "$SMOKE" = 1 ] && echo 1 || echo 4)" --device "$DEVICE" >>"$LOG" 2>&1 \
      || { log "classifiers failed"; exit 1; }
  fi
  read -ra graph <<<"${GRAPH_OVERRIDES-$([ "$DEVICE" = cuda ] && echo train.cuda_graph=true train.compile=true)}"
  read -ra full_overrides <<<"${FULL_OVERRIDES:-}"
  smoke=()
  [ "$SMOKE" = 1 ] && smoke=(train.max_steps=40 train.eval_every=20 train.checkpoint_every=20 train.log_every=10)
  budget=$(( $(left) - EVAL_S ))
  log "stage full: train configs/mnist_svhn.yaml for at most ${budget} s (the run stops at its 30 epochs or there)"
  if [ "$budget" -gt 30 ]; then
    train_full() {  # train_full SECONDS [key=value ...]
      local seconds=$1; shift
      timeout -s INT "$seconds" "${MMVAE[@]}" train configs/mnist_svhn.yaml "data.path=$DATA" "train.device=$DEVICE" \
        logging.progress_bar=false logging.wandb_mode=disabled "$@" "${smoke[@]}" "${full_overrides[@]}" \
        --run-dir "$RUN" >>"$OUT/train.txt" 2>&1
    }
    train_full "$budget" "${graph[@]}"
    code=$?
    log "train exit $code (124 or 130: stopped at the time budget; the newest checkpoint is evaluated)"
    tail -3 "$OUT/train.txt" >>"$LOG"
    if [ "$code" != 0 ] && [ "$code" != 124 ] && [ "$code" != 130 ] && [ "${#graph[@]}" -gt 0 ] \
       && [ ! -d "$RUN/checkpoints" ] && [ $(( $(left) - EVAL_S )) -gt 30 ]; then
      # The captured step failed before its first checkpoint: say so, then spend the lease on the quality run with
      # the path measured before (torch.compile's CUDA graphs), in a new run folder.
      log "the captured run failed (above); retrying with train.compile=true train.compile_mode=reduce-overhead"
      RUN="${RUN}_reduce_overhead"
      train_full "$(( $(left) - EVAL_S ))" train.compile=true train.compile_mode=reduce-overhead
      log "train (reduce-overhead) exit $?"
      tail -3 "$OUT/train.txt" >>"$LOG"
    fi
    # Epoch time at batch 128 from the run's own log (training, in-training evaluations and checkpoints included).
    "$PYTHON" -c '
import json, sys
from pathlib import Path
lines = [json.loads(x) for x in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines() if x.strip()]
timed = [x for x in lines if "time" in x and "step" in x]
if len(timed) >= 2:
    (a, b), per_epoch = (timed[0], timed[-1]), 1_682_040 // 128
    first, last = a["step"], b["step"]
    rate = (last - first) / (b["time"] - a["time"])
    print(f"epoch time: steps {first}..{last} at {rate:,.0f} steps/s -> one dm = 30 epoch "
          f"({per_epoch:,} steps of 128) in {per_epoch / rate:.1f} s; reached epoch {last / per_epoch:.2f} of 30")
' "$RUN" >>"$LOG" 2>&1
    # One archive: the run's log, summary, evaluation and grids (no checkpoints: the device tool returns 16 MiB a
    # file). Packed now and again after each step below, so that a command cut short still returns what was done.
    pack_run() {
      tar czf "$OUT/full_run.tar.gz" -C "$(dirname "$RUN")" --exclude=checkpoints --exclude='*.lock' "$(basename "$RUN")"
      log "packed $(du -h "$OUT/full_run.tar.gz" | cut -f1) into full_run.tar.gz"
    }
    pack_run
    limits=()
    [ "$SMOKE" = 1 ] && limits=(--limit 256 --iwae-samples 0 --generative-limit 256 --probe-train 512)
    # The evaluation ends 30 s before the budget; the swap grids get what is left, at most 60 s.
    timeout "$(( $(left) - 30 > 15 ? $(left) - 30 : 15 ))" "${MMVAE[@]}" evaluate "$RUN" --device "$DEVICE" \
      "${limits[@]}" >>"$LOG" 2>&1
    log "evaluate exit $?"
    pack_run
    swap_s=$(( $(left) - 10 < 60 ? $(left) - 10 : 60 ))
    if [ "$swap_s" -gt 5 ]; then
      timeout "$swap_s" "${MMVAE[@]}" swap "$RUN" --device "$DEVICE" >>"$LOG" 2>&1; log "swap exit $?"
      pack_run
    else
      log "no time left for the swap grids"
    fi
  else
    log "no time left for the full run (${budget} s); run STAGES=full in a command of its own"
  fi
fi
log "done in ${SECONDS} s"
