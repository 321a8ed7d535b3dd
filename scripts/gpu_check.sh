#!/usr/bin/env bash
# GPU check. Two paths:
#
# BACKEND=tensorflow (default): which devices TensorFlow sees, the benchmark on the GPU (IWAE
# k=50 at batch 100 and at a large batch, L_5000, with and without XLA), and a tiny
# `dvc repro` on the GPU. About 5 minutes once the packages are installed.
#   scripts/gpu_check.sh                 installs the CUDA build of TensorFlow into .venv-gpu
#                                        (needs PyPI), then runs the checks
#   PYTHON=/path/to/python scripts/gpu_check.sh
#                                        uses an environment that already has it
# Writes gpu_bench.json and gpu_bench_xla.json in the repo root.
#
# BACKEND=jax: for a machine with CUDA and JAX but no TensorFlow, MLflow, DVC or network (the
# lent GPU machines): runs scripts/gpu_run.py, the one device call (its docstring says what
# it measures; the wheels it needs come from scripts/gpu_wheels.sh), passing arguments on.
#   BACKEND=jax scripts/gpu_check.sh [--budget SECONDS ...]
#
# ALLOW_CPU=1 runs the checks even where no GPU is visible (to try this script on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${BACKEND:-tensorflow}" = jax ]; then
  exec "${PYTHON:-python3}" scripts/gpu_run.py "$@"
fi

if [ -z "${PYTHON:-}" ]; then
  if [ ! -x .venv-gpu/bin/python ]; then
    python3 -m venv .venv-gpu
    .venv-gpu/bin/pip install -q -r requirements.txt "tensorflow[and-cuda]==2.21.0"
  fi
  PYTHON=.venv-gpu/bin/python
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PYTHON" - <<'PY'
import os
from vaelab.quiet import silence_tf; silence_tf()
import tensorflow as tf
print("TensorFlow", tf.__version__, "sees:", [d.name for d in tf.config.list_physical_devices()])
if not tf.config.list_physical_devices("GPU"):
    if not os.environ.get("ALLOW_CPU"):
        raise SystemExit("no GPU visible to TensorFlow: check the driver and tensorflow[and-cuda]")
    print("no GPU: running on the CPU (ALLOW_CPU)")
PY
"$PYTHON" -m vaelab.bench --k 50 1 --batch-size 100 1000 --eval-images 500 --json gpu_bench.json
"$PYTHON" -m vaelab.bench --jit --k 50 --batch-size 100 1000 --eval-images 500 --json gpu_bench_xla.json
# the end-to-end pipeline tests are a tiny `dvc repro` in a temporary copy of the repo
"$PYTHON" -m pytest -q tests/test_pipeline.py -k "repro_runs_every_stage or outputs_exist"
