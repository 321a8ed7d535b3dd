"""Silence TensorFlow's start-up noise. Call `silence_tf()` before anything imports TF.

TF_CPP_MIN_LOG_LEVEL hides most C++ logging, but TF 2.21 still prints absl lines (the
"could not find cuda drivers" notice, the absl::InitializeLog warning) straight to file
descriptor 2 while it loads, so stderr is pointed at /dev/null for the import alone.
Real errors after the import reach the terminal as usual.
"""
import os
import sys


def silence_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf  # noqa: F401
        import tensorflow_probability  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tf.get_logger().setLevel("ERROR")
