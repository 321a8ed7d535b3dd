"""Encoder and decoder networks (Keras, tensors in, tensors out) and the TFP distributions
built from their outputs.

Keras 3 layers must not carry TFP distributions, so the networks return plain tensors
(`[loc, scale]` or logits) and the small factories below turn them into distributions. That
split is also what makes the exported `encoder.keras` / `decoder.keras` loadable with plain
`keras.saving.load_model(path)`: they hold built-in layers only, so a model trained on one
Keras backend loads on the other. The factories use `keras.ops` and the TFP substrate of the
active backend (vaelab.backend), so they are written once for TensorFlow and JAX.
"""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from keras import ops

from .backend import tfd
from .config import ModelConfig, UserError

N_PIXELS = 784


class MissingModelError(UserError, FileNotFoundError):
    """A model folder lacks its files: it was never trained, or training did not finish."""


class DamagedModelError(UserError, ValueError):
    """A model file exists but cannot be read (truncated, overwritten, another format)."""


# softplus can underflow to 0 for a very negative pre-activation; a floor keeps log q(z|x)
# and the Gaussian log-likelihood finite. Small next to any scale a trained model uses.
SCALE_FLOOR = 1e-4


def _policy(precision: str) -> str | None:
    # None follows Keras' global policy (float32 unless a caller, such as the float64
    # gradient tests, chose otherwise).
    return None if precision == "float32" else precision


def _float(t):
    """bfloat16 network outputs -> float32 for TFP; any other dtype is left alone."""
    return ops.cast(t, "float32") if keras.backend.standardize_dtype(t.dtype) == "bfloat16" else t


def _mlp(h, sizes, activation, prefix, precision):
    # With precision "mixed_bfloat16" every Dense layer multiplies in bfloat16 (weights stay
    # float32); the factories below cast the outputs to float32, so every log-probability
    # and sum over pixels is computed in float32.
    for i, n in enumerate(sizes):
        h = keras.layers.Dense(n, activation=activation, name=f"{prefix}_{i}",
                               dtype=_policy(precision))(h)
    return h


def _positive(h, size, name, precision):
    # Rescaling(scale=1, offset=floor) is a built-in way to add the floor, so the saved model
    # needs no custom objects. It runs in float32, so the floor is never rounded away.
    s = keras.layers.Dense(size, activation="softplus", name=f"{name}_softplus",
                           dtype=_policy(precision))(h)
    return keras.layers.Rescaling(1.0, offset=SCALE_FLOOR, name=name)(s)


def build_encoder(cfg: ModelConfig) -> keras.Model:
    """x [B, 784] -> [loc, scale], each [B, latent]."""
    x = keras.Input((N_PIXELS,), name="x")
    h = _mlp(x, cfg.hidden, cfg.activation, "enc", cfg.precision)
    loc = keras.layers.Dense(cfg.latent, name="loc", dtype=_policy(cfg.precision))(h)
    return keras.Model(x, [loc, _positive(h, cfg.latent, "scale", cfg.precision)],
                       name="encoder")


def build_decoder(cfg: ModelConfig) -> keras.Model:
    """z [B, latent] -> Bernoulli logits [B, 784], or Gaussian [loc, scale] each [B, 784]."""
    z = keras.Input((cfg.latent,), name="z")
    h = _mlp(z, tuple(reversed(cfg.hidden)), cfg.activation, "dec", cfg.precision)
    if cfg.decoder == "bernoulli":
        logits = keras.layers.Dense(N_PIXELS, name="logits", dtype=_policy(cfg.precision))(h)
        return keras.Model(z, logits, name="decoder")
    loc = keras.layers.Dense(N_PIXELS, activation="sigmoid", name="loc",
                             dtype=_policy(cfg.precision))(h)
    if cfg.decoder_scale == "learned":
        scale = _positive(h, N_PIXELS, "scale", cfg.precision)
    else:
        # A constant output of the right shape from built-in layers: 0 * loc + sigma.
        scale = keras.layers.Rescaling(0.0, offset=float(cfg.decoder_scale), name="scale")(loc)
    return keras.Model(z, [loc, scale], name="decoder")


# ---------------------------------------------------------------------------------------
# distributions: small factories, TFP style. Events are whole vectors (Independent), so
# log_prob returns one number per example and samples keep the sample axis first.

ACTIVE_THRESHOLD = 1e-2  # Burda et al. 2015, section 5.2


def posterior_params(encoder: keras.Model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """loc and scale of q(z|x) as float32 arrays, [N, latent] each."""
    loc, scale = encoder(ops.convert_to_tensor(x))
    return np.asarray(loc, np.float32), np.asarray(scale, np.float32)


def active_mask(loc: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> np.ndarray:
    """Active units (Burda et al.): Cov_x(E_q[z_u]) > threshold. loc [N, latent] -> [latent]."""
    return np.asarray(loc).var(axis=0) > threshold


def prior(latent: int) -> tfd.Distribution:
    """p(z) = N(0, I), event shape [latent]."""
    zeros = ops.zeros([latent])
    return tfd.Independent(tfd.Normal(zeros, ops.ones([latent])), reinterpreted_batch_ndims=1)


def posterior(encoder: keras.Model, x) -> tfd.Distribution:
    """q(z|x) = N(loc(x), scale(x)^2), batch [B], event [latent]."""
    loc, scale = (_float(t) for t in encoder(x))  # [B, latent] each
    return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)


class BernoulliLogits(tfd.Bernoulli):
    """tfd.Bernoulli with a cheaper log_prob: for logits l and any x in [0, 1],
    log p(x) = x l - softplus(l), one softplus per pixel where tfd.Bernoulli evaluates
    -x softplus(-l) - (1 - x) softplus(l), two softplus and two guarded products, for the
    same number. The Bernoulli log-likelihood over k x batch x 784 pixels is most of the
    non-matmul work of an IWAE step and of L_5000; measured with `python -m vaelab.bench`,
    this made IWAE k=50 training 25% faster and L_5000 40%. Values and gradients equal
    tfd.Bernoulli's (tests/test_speed.py). Needs finite logits, which a network gives."""

    def _log_prob(self, event):
        logits = self.logits_parameter()
        return ops.cast(event, logits.dtype) * logits - ops.softplus(logits)


def make_decode(decoder: keras.Model, kind: str):
    """A function z [..., latent] -> p(x|z), batch [...], event [784].

    Any leading sample axes are folded into one batch for the network, so k samples of a
    batch of B cost one [k*B, latent] matmul chain, not k small ones.
    """

    def decode(z) -> tfd.Distribution:
        lead = ops.shape(z)[:-1]  # static ints, or (TF, unknown size) scalar tensors
        flat = ops.reshape(z, (-1, z.shape[-1]))  # [k*B, latent]
        out = decoder(flat)
        unflat = lambda t: _float(ops.reshape(t, (*lead, N_PIXELS)))  # noqa: E731
        if kind == "bernoulli":
            return tfd.Independent(BernoulliLogits(logits=unflat(out), dtype=np.float32), 1)
        loc, scale = out
        return tfd.Independent(tfd.Normal(unflat(loc), unflat(scale)), 1)

    return decode


def decoder_mean(decoder: keras.Model, kind: str, z):
    """E[x|z] [B, 784]: the picture a sample from the model shows."""
    out = decoder(z)
    return ops.sigmoid(_float(out)) if kind == "bernoulli" else _float(out[0])


# ---------------------------------------------------------------------------------------
# export: encoder.keras, decoder.keras, model.json

def save(folder: str | Path, encoder: keras.Model, decoder: keras.Model, info: dict) -> None:
    """Write the three files into `folder` (the caller makes it a fresh temp folder and renames
    it into place, so a half-saved model is never seen)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder.save(folder / "encoder.keras")
    decoder.save(folder / "decoder.keras")
    (folder / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def load(folder: str | Path) -> tuple[keras.Model, keras.Model, dict]:
    folder = Path(folder)
    missing = [n for n in ("encoder.keras", "decoder.keras", "model.json")
               if not (folder / n).exists()]
    if missing:
        raise MissingModelError(
            f"{folder}: missing {', '.join(missing)}; train it first (dvc repro train@{folder.name})")
    loaded = []
    for name in ("model.json", "encoder.keras", "decoder.keras"):
        try:
            loaded.append(json.loads((folder / name).read_text()) if name == "model.json"
                          else keras.saving.load_model(folder / name))
        except Exception as e:  # noqa: BLE001 - Keras reports a damaged zip as "File not found"
            raise DamagedModelError(
                f"{folder / name}: damaged, cannot be read ({type(e).__name__}); retrain it "
                f"(dvc repro -f train@{folder.name})") from None
    info, encoder, decoder = loaded
    return encoder, decoder, info
