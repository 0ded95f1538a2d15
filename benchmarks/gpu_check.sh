#!/usr/bin/env bash
# The GPU check (about 9 minutes on one H200; torch + onnxruntime, no TensorRT needed). Run it from the repository
# root on a machine with a CUDA GPU:
#
#     bash benchmarks/gpu_check.sh            # tables on stdout; a copy in $OUT/gpu_check.md when OUT is set
#     SECTIONS="2 2b 6" bash benchmarks/gpu_check.sh   # only those sections (each has its own time limit below)
#
# 1. identity: what e2rnas records about this GPU, and that it refuses a named target / an engine of another GPU
#    model, TensorRT version or sm; torch CUDA and ONNX Runtime CUDA parity against the CPU on DARTS_V2.
# 2. the search step at the paper's width (8 cells, C=16, batch 64), eager and replayed from a CUDA graph side by
#    side: the paper preset's E2RNAS second-order step, DARTS' second-order step, the first-order step; s/step, the
#    hours of a 50-epoch search (19,500 steps) at that speed, peak GPU memory, and one profiled step per row (time
#    per op, kernel launches, host syncs). Targets (issue 26): paper preset <= 1.1 s/step (<= 6 h), DARTS <= 0.5 s.
#    2b: the supernet pass under torch.compile(mode="reduce-overhead") against eager (the issue's other lever).
# 3. a retrain step at 20 cells, C=36, batch 96 with auxiliary head and drop-path, AMP off / TF32 / bf16 / fp16.
# 4. benchmarks/latency.py --target cuda at batch 1 and 64: fp32 with TF32 off, TF32, fp16, CUDA graph; ORT CUDA
#    and TensorRT rows where installed.
# 5. a short end-to-end `e2rnas search --device cuda` (embedded default, 2 epochs x 4 steps): the whole search
#    (objectives, MGDA, derivation, checkpoint) on the GPU, with the step captured (--cuda-graphs auto).
# 6. the gpu-marked tests of the captured step, where pytest is installed.
# Each section has its own time limit; one that fails or times out is reported and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log=${OUT:+$OUT/gpu_check.md}
log=${log:-/dev/null}

# The GPU machine may have no network: install this checkout without dependencies into a private folder.
if ! "$PY" -c "import e2rnas.deploy_targets.gpu_identity" 2>/dev/null; then
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-deps --no-build-isolation --target "$site" . >/dev/null 2>&1 \
    || { echo "error: cannot install e2rnas from this checkout (pip install --no-deps --target)" >&2; exit 2; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

status=0
section() {  # section TITLE SECONDS COMMAND...   (SECTIONS="2 2b 6": only those, e.g. to fit a 10-minute call)
  local title=$1 limit=$2
  shift 2
  local num=${title%%.*}
  if [ -n "${SECTIONS:-}" ] && [[ " $SECTIONS " != *" $num "* ]]; then
    echo -e "\n## $title: skipped (SECTIONS=$SECTIONS)" | tee -a "$log"
    return
  fi
  echo -e "\n## $title\n+ $*" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "(timed out after ${limit} s)" | tee -a "$log"
  [ "$rc" != 0 ] && status=1
  echo "(section: $((SECONDS - t0)) s, exit $rc)" | tee -a "$log"
}

nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm,pstate,memory.total --format=csv 2>&1 \
  | tee -a "$log"
section "1. identity and parity" 60 "$PY" benchmarks/gpu_identity.py
section "2. search step, paper config (8 cells, C=16, batch 64), eager and captured" 300 "$PY" \
  benchmarks/search_step.py --device cuda --config paper --steps 3 --warmup 2 --graphs eager captured --profile \
  --modes "supernet fwd+bwd (unit)" "DARTS 2nd order (val only)" "E2RNAS paper preset (2nd order, central hvp)" \
  "E2RNAS 1st order (5 objectives, MGDA)"
section "2b. supernet pass under torch.compile(mode=reduce-overhead)" 180 "$PY" benchmarks/search_step.py \
  --device cuda --config paper --steps 5 --warmup 3 --modes "supernet fwd+bwd (unit)" \
  "supernet fwd+bwd, torch.compile reduce-overhead"
section "3. retrain step (20 cells, C=36, batch 96)" 80 "$PY" benchmarks/train_step.py --device cuda --steps 10 \
  --warmup 3
section "4. latency, batch 1 and 64" 110 "$PY" benchmarks/latency.py --target cuda --batch 1,64 --quick
run_dir=$(mktemp -d)
# from another folder: the checkout's e2rnas/ must not shadow the installed package (which maps cli/, export/...)
section "5. search end to end on cuda" 90 bash -c 'cd "$1" && "$2" -c "from e2rnas.cli.app import main; main()" \
  search --device cuda --epochs 2 --warmup-epochs 1 --max-steps-per-epoch 4 --out "$1/search"' _ "$run_dir" "$PY"
# the gpu-marked tests of the captured step (eager vs captured alphas within 1e-5), where pytest is installed
if "$PY" -c "import pytest, typer" 2>/dev/null; then
  section "6. captured step equals the eager step (pytest -m gpu)" 120 bash -c 'cd "$1" && "$2" -m pytest -q \
    -p no:cacheprovider -m gpu "$3/tests/test_cuda_graphs.py"' _ "$run_dir" "$PY" "$PWD"
else
  echo -e "\n## 6. captured step equals the eager step: skipped (no pytest/typer here)" | tee -a "$log"
fi
exit $status
