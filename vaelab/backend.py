"""The one module that knows which Keras backend runs (TensorFlow or JAX).

It picks TFP's substrate to match (`tensorflow_probability` or its JAX substrate, same API)
and holds the few helpers whose code must differ: stateless seeds, the uniform draw of
dynamic binarization, gradients, and compiling a function that calls Keras models.
Objectives, distributions and measurements are written once, against `keras.ops` and `tfd`
from here.

The backend is fixed per process by KERAS_BACKEND before Keras is first imported; stage
scripts set it from `train.backend` (vaelab.quiet.use_backend). On the JAX path TensorFlow
is never imported by vaelab (a GPU machine may have JAX only).
"""
from __future__ import annotations

import os

import keras
import numpy as np

from vaelab.quiet import FUSED_FLAGS

NAME = keras.backend.backend()

if NAME == "tensorflow":
    import tensorflow as tf
    import tensorflow_probability as tfp
elif NAME == "jax":
    import sys

    import jax
    import jax.numpy as jnp

    # TFP's JAX substrate imports TensorFlow whenever it is installed, only to copy its
    # docstrings (tensorflow_probability/python/internal/backend/jax/_utils.py and
    # tf_inspect.py, each in a try/except ImportError): seconds of start-up and absl lines
    # on stderr. Unimportable while the substrate loads, TF is skipped as on a JAX-only
    # machine. A finder that refuses it, not a None in sys.modules: Keras takes any entry
    # there for an imported TensorFlow.
    class _NoTensorFlow:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] == "tensorflow":
                raise ImportError("TensorFlow is not imported on the JAX backend")

    sys.meta_path.insert(0, _NoTensorFlow)
    try:
        from tensorflow_probability.substrates import jax as tfp
        tfp.distributions, tfp.bijectors, tfp.math  # noqa: B018 - lazy modules: load them now
        # Keras imports TensorFlow too whenever it can (keras.utils.set_random_seed seeds
        # it), through a lazy handle that keeps its first answer: let that answer be no.
        from keras.src.utils import module_utils
        module_utils.tensorflow.available  # noqa: B018
    finally:
        sys.meta_path.remove(_NoTensorFlow)
else:  # pragma: no cover - a process started with KERAS_BACKEND=torch, say
    raise ImportError(f"vaelab runs on Keras' tensorflow or jax backend, not {NAME!r} "
                      "(set KERAS_BACKEND, or train.backend in params.yaml)")

tfd = tfp.distributions


# ---------------------------------------------------------------------------------------
# stateless randomness: a seed is two integers; TF takes int32 [2], JAX a raw uint32 key [2]

def seed(a: int, b: int = 0):
    """The stateless seed (a, b), as the active backend's TFP substrate takes it."""
    return seeds([a, b])


def seeds(rows):
    """Seeds from integers: [..., 2] (one seed, or a row per step)."""
    if NAME == "jax":
        return jnp.asarray(np.asarray(rows, np.int64).astype(np.uint32))
    return tf.constant(np.asarray(rows, np.int32))


def split_seed(s):
    """Two independent seeds from one."""
    if NAME == "jax":
        keys = jax.random.split(s, 2)
        return keys[0], keys[1]
    return tuple(tf.unstack(tf.random.experimental.stateless_split(s, 2)))


def uniform(shape, s):
    """U[0, 1) float32 draws of `shape`, a pure function of the seed."""
    if NAME == "jax":
        return jax.random.uniform(s, tuple(shape), dtype=jnp.float32)
    return tf.random.stateless_uniform(shape, s)


def mean(x, axis=None):
    """The mean in x's own precision. keras.ops.mean on JAX computes float64 input in
    float32 (Keras' dtype promotion), which the float64 maths tests cannot accept; on TF
    it is tf.reduce_mean, as keras.ops.mean there."""
    if NAME == "jax":
        return jnp.mean(x, axis=axis)
    return tf.reduce_mean(x, axis=axis)


def gather(x, idx):
    """Rows idx of x, on x's device."""
    if NAME == "jax":
        return jnp.take(x, jnp.asarray(idx), axis=0)
    return tf.gather(x, idx)


# ---------------------------------------------------------------------------------------
# gradients and compiled functions of Keras models

def _stateless(fn, variables):
    """JAX: fn(*args) that calls Keras layers -> pure(values, *args) in which `variables`
    read `values` (what Keras' stateless_call does for one model, here for any function of
    several, e.g. an objective that calls the encoder and the decoder)."""

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args)

    return pure


def value_and_grad(fn, variables):
    """fn(*args) -> scalar, computed from Keras `variables`; returns a function
    (*args) -> (value, [d value / d v for v in variables]). Usable eagerly and inside
    `compile`. TF gives None for a variable the value does not depend on, JAX zeros."""
    if NAME == "jax":
        grad = jax.value_and_grad(_stateless(fn, variables))
        return lambda *args: grad([v.value for v in variables], *args)

    def tf_value_and_grad(*args):
        with tf.GradientTape() as tape:
            value = fn(*args)
        return value, tape.gradient(value, variables)

    return tf_value_and_grad


def grads_by_group(fn, groups):
    """fn(*args) -> (loss, surrogates, aux): a scalar; None when every group follows it, else
    {group: scalar} (objectives.surrogate_losses); and whatever the caller wants back (the
    training step's logs). groups: [(name, Keras variables)].
    Returns grads(*args, values=None) -> ({group: [d target / d v for v in its variables]},
    loss, aux): one forward pass and one backward pass per distinct target (one for a shared
    loss), where a gradient per group from value_and_grad would repeat the forward pass each
    time. The training step and the gradient SNR both take their gradients here. On JAX the
    gradients are taken at `values` (every group's variables' values, in order: what a jitted
    training step carries), by default the variables' own; TF reads the variables. TF gives
    None for a variable its target does not depend on, JAX zeros."""
    names = [g for g, _ in groups]
    sizes = [len(vs) for _, vs in groups]
    variables = [v for _, vs in groups for v in vs]

    def split(flat):
        out, start = {}, 0
        for g, n in zip(names, sizes):
            out[g], start = list(flat[start:start + n]), start + n
        return out

    if NAME == "jax":
        def targets(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                loss, surrogates, aux = fn(*args)
            out = [loss] if surrogates is None else [surrogates[g] for g in names]
            return jnp.stack(out), (loss, aux)

        def jax_grads(*args, values=None):
            values = [v.value for v in variables] if values is None else values
            out, vjp, (loss, aux) = jax.vjp(lambda v: targets(v, *args), values, has_aux=True)
            if out.shape[0] == 1:
                return split(vjp(jnp.ones_like(out))[0]), loss, aux
            return ({g: split(vjp(jnp.zeros_like(out).at[i].set(1.0))[0])[g]
                     for i, g in enumerate(names)}, loss, aux)

        return jax_grads

    def tf_grads(*args, values=None):
        if values is not None:
            raise ValueError("values= is for JAX; TensorFlow differentiates the variables")
        # persistent: one backward pass per surrogate over the same forward pass
        with tf.GradientTape(persistent=True) as tape:
            loss, surrogates, aux = fn(*args)
        if surrogates is None:
            return split(tape.gradient(loss, variables)), loss, aux
        return {g: tape.gradient(surrogates[g], vs) for g, vs in groups}, loss, aux

    return tf_grads


def map_rows(fn, xs):
    """[fn(x) for x in xs] stacked, as one vectorized computation: the rows of xs [n, ...]
    (e.g. n seeds) go through fn's ops together, so n small calls become one call of n-row
    matmuls. TF: tf.vectorized_map; an op with no vectorized form (TF's stateless draws take
    one seed, not a batch of them) runs as a loop over the rows inside it, so each row draws
    the numbers fn(row) alone draws. JAX: jax.vmap."""
    if NAME == "jax":
        return jax.vmap(fn)(xs)
    return tf.vectorized_map(fn, xs, fallback_to_while_loop=True, warn=False)


def compile(fn, variables, jit: bool | str = False):
    """fn(*args) calling Keras models whose weights are `variables` -> a compiled function
    of the same arguments that reads the variables' current values at each call.
    TF: `tf_function(fn, jit)`; JAX: jax.jit, always XLA (`jit` is TF's choice)."""
    if NAME == "jax":
        compiled = jax.jit(_stateless(fn, variables))
        return lambda *args: compiled([v.value for v in variables], *args)
    return tf_function(fn, jit, reduce_retracing=True)


def fused_ready() -> bool:
    """Whether this process can run `jit="fused"`: TensorFlow started with quiet's XLA flags
    (vaelab.quiet.use_backend / silence_tf set them before importing it)."""
    flags = os.environ.get("TF_XLA_FLAGS", "").split()
    return all(f in flags for f in FUSED_FLAGS)


def tf_function(fn, jit: bool | str, **kwargs):
    """fn as a TF graph. jit False: TF's own kernels; True: all of fn in XLA (jit_compile:
    faster on the CPU, but TF's stateless RNG draws other numbers inside XLA); "fused": XLA
    fuses only the element-wise maths and reductions (auto-clustering limited to fusible ops),
    while the random draws and the matmuls stay TF's, so the draws are today's and only
    rounding differs from False. TensorFlow reads the auto-clustering setting whenever it
    runs a function (a graph made under it and run without it is run unclustered), hence
    the setting around every call."""
    if jit != "fused":
        return tf.function(fn, jit_compile=bool(jit), **kwargs)
    if not fused_ready():
        raise RuntimeError(
            "jit: fused needs TF_XLA_FLAGS to hold " + " ".join(FUSED_FLAGS) + " before "
            "TensorFlow is imported (vaelab.quiet.use_backend or silence_tf sets them)")
    graph = tf.function(fn, **kwargs)

    def autoclustered(*args):
        before = tf.config.optimizer.get_jit()
        tf.config.optimizer.set_jit("autoclustering")
        try:
            return graph(*args)
        finally:
            tf.config.optimizer.set_jit(before or False)

    return autoclustered


def devices() -> list[str]:
    """The devices the backend computes on, e.g. ['cuda:0'] or ['TFRT_CPU_0']."""
    if NAME == "jax":
        return [f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()]
    return [d.name for d in tf.config.list_logical_devices()]


def versions() -> dict:
    out = {"backend": NAME, "keras": keras.__version__, "tfp": tfp.__version__}
    out["jax" if NAME == "jax" else "tensorflow"] = (jax if NAME == "jax" else tf).__version__
    return out
