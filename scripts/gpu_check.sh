#!/usr/bin/env bash
# GPU check: which devices TensorFlow sees, the benchmark on the GPU (IWAE k=50 at batch 100
# and at a large batch, L_5000), and a tiny `dvc repro` on the GPU. About 5 minutes once
# the packages are installed. Needs PyPI access for the CUDA build of TensorFlow.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-gpu/bin/python ]; then
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q -r requirements.txt "tensorflow[and-cuda]==2.21.0"
fi
. .venv-gpu/bin/activate
python - <<'PY'
from vaelab.quiet import silence_tf; silence_tf()
import tensorflow as tf
print("TensorFlow", tf.__version__, "sees:", tf.config.list_physical_devices())
if not tf.config.list_physical_devices("GPU"):
    raise SystemExit("no GPU visible to TensorFlow: check the driver and tensorflow[and-cuda]")
PY
python -m vaelab.bench --k 50 1 --batch-size 100 1000 --eval-images 500 --json gpu_bench.json
python -m vaelab.bench --jit --k 50 --batch-size 100 1000 --eval-images 500 --json gpu_bench_xla.json
# the end-to-end pipeline test is a tiny `dvc repro` in a temporary copy of the repo
python -m pytest -q tests/test_pipeline.py -k "repro_runs_every_stage or outputs_exist"
