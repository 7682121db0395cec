#!/usr/bin/env bash
# The checks of one GPU session, in one device run (about 7 min of a 10-min call):
#
#   here:    python tools/gpu_wheels.py            # wheelhouse/: Ray and what else the GPU lacks
#   device:  run(command="bash tools/gpu_session.sh", carry=["wheelhouse"], timeout_s=590)
#
# On the GPU machine: installs the wheels beside the image's PyTorch (no index there), then
# runs the `gpu` tests, benchmarks/gpu.py (the bare step) and benchmarks/gpu_ray.py (the
# training job through Ray Train against that step, evaluation and prediction on the GPU).
# Every step has its own time limit and goes on when one fails; what each printed lands in
# $OUT (at most 8 files come back). Tried end to end on a CPU with GPU_SESSION_SMOKE=1.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
SMOKE=${GPU_SESSION_SMOKE:-0}

step() {  # step NAME SECONDS COMMAND...: run COMMAND with a limit, its output in $OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local status=$?
  echo "$name: exit $status after $((SECONDS - started)) s" | tee -a "$OUT/steps.txt"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
  nproc
  "$PYTHON" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda)'
} >"$OUT/steps.txt" 2>&1

if [ "$SMOKE" = 1 ]; then
  # Here: the project's own environment already has every package.
  gpu=(--device cpu --backbone resnet18 --size 64 --batch-size 2 --warmup 0 --iterations 1)
  ray=(--device cpu --backbone resnet18 --size 64 --images 16 --epochs 2 --warmup 1 --iterations 2)
else
  step install 240 "$PYTHON" -m pip install --no-index --no-deps --target .gpu-site wheelhouse/*.whl
  export PYTHONPATH="$PWD/.gpu-site:$PWD"
  export PATH="$PWD/.gpu-site/bin:$PATH"
  gpu=()
  ray=()
fi
step imports 60 "$PYTHON" -c 'import ray, ray.train.torch, ray.tune, ray.data, pydantic, psutil, pynvml; print("ray", ray.__version__)'
step gpu_tests 150 "$PYTHON" -m pytest -m gpu -p no:cacheprovider -q -o addopts="" tests/test_gpu.py tests/test_device.py
step gpu 150 "$PYTHON" benchmarks/gpu.py --output "$OUT/gpu.json" "${gpu[@]}"
step gpu_ray 360 "$PYTHON" benchmarks/gpu_ray.py --work /tmp/gpu-ray --output "$OUT/gpu_ray.json" "${ray[@]}"
cat "$OUT/steps.txt"
