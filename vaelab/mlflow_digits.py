"""The MLflow model a training run logs: digits as stored in, pixel probabilities out.

MLflow runs this file on its own when it loads the model (models from code), so it imports
numpy, keras and mlflow only, never vaelab. Its one artifact, `keras_model`, is the trained
networks composed as x -> E[x|z] at the posterior mean (vaelab.fit.write_outputs).

    model = mlflow.pyfunc.load_model(uri)
    probs = model.predict(x)   # float32 [N, 784]

`x` is a batch [N, 28, 28] or [N, 784] of:
- uint8 grey values 0..255, as `prepare` stores them (`x` in data/prepared/*.npz);
- uint8 bits 0/1 (`xb` in test.npz): an integer batch with no value above 1 is read as bits
  (other integer dtypes too: JSON sent to `mlflow models serve` arrives as int64);
- floats in [0, 1] (pixel intensities, bits or probabilities).
The output is E[x|z] for z the posterior mean: per pixel the probability of a 1 (Bernoulli
decoder; the sigmoid of its logits), or the mean intensity in [0, 1] (Gaussian decoder).
"""
from __future__ import annotations

import mlflow
import numpy as np

PIXELS = 28 * 28


def as_model_input(x) -> np.ndarray:
    """A batch of digits as stored -> float32 [N, 784] in [0, 1], what the networks were
    trained on; anything else is a ValueError saying what is accepted."""
    x = np.asarray(x)
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != PIXELS:
        raise ValueError(f"expected a batch of digits [N, 28, 28] or [N, 784], got shape "
                         f"{x.shape} (one digit: x[None])")
    x = x.reshape(len(x), PIXELS)
    if np.issubdtype(x.dtype, np.integer):  # uint8 as stored; int64 through JSON (serving)
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"integer digits must be grey values 0..255 or bits 0/1, got "
                             f"values in [{x.min()}, {x.max()}]")
        # bits stay bits; grey values 0..255 become intensities (an all-black digit is
        # the same either way)
        return x.astype(np.float32) if x.size == 0 or x.max() <= 1 else x.astype(np.float32) / 255
    if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise ValueError(f"float digits must be pixel intensities in [0, 1], got values in "
                             f"[{np.nanmin(x):g}, {np.nanmax(x):g}]; pass grey values 0..255 as "
                             "uint8, or divide them by 255")
        return x
    raise ValueError(f"expected uint8 digits (0..255 or 0/1) or floats in [0, 1], got dtype "
                     f"{x.dtype}")


class Digits(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import keras

        self.model = keras.saving.load_model(context.artifacts["keras_model"])

    def predict(self, context, model_input: np.ndarray, params=None):
        return np.asarray(self.model.predict(as_model_input(model_input), verbose=0),
                          dtype=np.float32)


mlflow.models.set_model(Digits())
