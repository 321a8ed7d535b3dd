"""Choose the Keras backend and silence TensorFlow's start-up noise, before Keras is imported.

`use_backend(name)` is what stage scripts call once they have read params.yaml
(`train.backend`); `silence_tf()` keeps KERAS_BACKEND as the environment sets it
(tensorflow by default), for tests and tools that do not read params.

TF_CPP_MIN_LOG_LEVEL hides most C++ logging, but TF 2.21 still prints absl lines (the
"could not find cuda drivers" notice, the absl::InitializeLog warning) straight to file
descriptor 2 while it loads, so stderr is pointed at /dev/null for the import alone.
Real errors after the import reach the terminal as usual. On the JAX backend TensorFlow is
never imported (a GPU machine may have JAX only).
"""
import os
import sys

# XLA's auto-clustering on the CPU, limited to fusible ops (element-wise maths and reductions):
# what `train.jit: fused` / `evaluate.jit: fused` turn on for their own compiled functions
# (vaelab.backend.tf_function). TensorFlow reads these flags once, so they are set before it is
# imported; by themselves they compile nothing: only a function run under
# tf.config.optimizer.set_jit("autoclustering") is clustered. The random draws, never fusible,
# stay outside XLA and draw today's numbers (inside XLA TF's stateless RNG draws others).
FUSED_FLAGS = ("--tf_xla_cpu_global_jit", "--tf_xla_ops_to_cluster=FUSIBLE")


def use_backend(name: str) -> None:
    """Run Keras on `name`. Keras reads KERAS_BACKEND once, at its first import, so a process
    that already imported it on another backend cannot switch: that is a bug, not a user
    mistake, and raises RuntimeError."""
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise RuntimeError(f"Keras already runs on {current}; cannot switch to {name} "
                               "in this process (set KERAS_BACKEND before importing keras)")
    os.environ["KERAS_BACKEND"] = name
    if name == "tensorflow":
        _import_tf_quietly()


def silence_tf() -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        _import_tf_quietly()


def _import_tf_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return  # too late for the flags: backend.fused_ready() tells, `fused` refuses to run
    flags = os.environ.get("TF_XLA_FLAGS", "").split()
    os.environ["TF_XLA_FLAGS"] = " ".join(flags + [f for f in FUSED_FLAGS if f not in flags])
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf  # noqa: F401
        import tensorflow_probability  # noqa: F401
        # The devices too: CUDA's initialisation prints absl lines of its own at the first
        # device query (once in a local test run: "failed call to cuInit: ... (303)" on this
        # GPU-less machine with CUDA's libraries installed), which a stage's one-line error
        # must not carry.
        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tf.get_logger().setLevel("ERROR")
