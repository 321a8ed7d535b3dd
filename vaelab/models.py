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

import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import ops

from . import backend, card, provenance
from .backend import tfd
from .config import ModelConfig, UserError
from .cost import n_weights  # noqa: F401 - the memory check of stages/train.py

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
    """q(z|x) = N(loc(x), scale(x)^2), batch [B], event [latent]. An encoder of L layers
    (`build_encoder_layers`) gives the joint q(h1, .., h_L | x) (`posterior_layers`)."""
    if len(encoder.inputs) > 1:
        return posterior_layers(encoder, x)
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
    # a list also for one output when called on a symbolic input (the two-layer p_x)
    first = _float(_outputs(decoder(z))[0])  # logits, or the Gaussian's loc
    return ops.sigmoid(first) if kind == "bernoulli" else first


# ---------------------------------------------------------------------------------------
# stacked stochastic layers (Burda et al. 2015's second architecture for two):
#   q: x -> hidden -> h1 (h1_latent) -> h1_hidden -> h2 (latent)
#   p: h2 ~ N(0, I) -> reversed(h1_hidden) -> h1 -> reversed(hidden) -> x
# and for L layers the same chain, h_1 .. h_L, as ModelConfig.stochastic lists them.
# Gaussian/decoder sub-networks, exported as two functional models whose inputs and
# outputs are plain tensors (README, export contract); for two layers:
#   encoder.keras: [x, h1] -> [loc1, scale1, loc2, scale2]   q(h1|x), q(h2|h1)
#   decoder.keras: [h2, h1] -> [loc, scale, *p(x|h1) outputs]  p(h1|h2), p(x|h1)
# for L: encoder [x, h1 .. h_{L-1}] -> q(h1|x), q(h2|h1) .. q(h_L|h_{L-1}); decoder
# [h_L .. h1] -> p(h_{L-1}|h_L) .. p(h1|h2), p(x|h1). Each piece is a nested model of its own
# (get_layer(Q_H1) ...: q_h<i>, p_h<i>, p_x), so a step runs only what it needs. Latents are
# structures {"h1": [..., d1], "h2": [..., d2], ...}, and the distributions are TFP joint
# distributions over them: q.sample(k, seed) gives [k, B, d] tensors, q.log_prob /
# p.log_prob [k, B], so the objectives need no change.

Q_H1, Q_H2, P_H1, P_X = "q_h1", "q_h2", "p_h1", "p_x"


def _q(i: int) -> str:
    return f"q_h{i}"


def _p(i: int) -> str:
    return f"p_h{i}"


def _gaussian_net(in_size: int, hidden, out: int, cfg: ModelConfig, name: str) -> keras.Model:
    """[B, in_size] -> [loc, scale], each [B, out]."""
    i = keras.Input((in_size,), name=f"{name}_in")
    h = _mlp(i, hidden, cfg.activation, name, cfg.precision)
    loc = keras.layers.Dense(out, name=f"{name}_loc", dtype=_policy(cfg.precision))(h)
    return keras.Model(i, [loc, _positive(h, out, f"{name}_scale", cfg.precision)], name=name)


def _outputs(t) -> list:
    return list(t) if isinstance(t, (list, tuple)) else [t]


def build_encoder_layers(cfg: ModelConfig) -> keras.Model:
    """[x [B, 784], h1 .. h_{L-1}] -> [loc1, scale1 (q(h1|x)), loc2, scale2 (q(h2|h1)), ...].
    Built bottom up (q_h1 first): the seeded initialisation order of the two-layer model."""
    sizes, below, nets = cfg.stochastic, N_PIXELS, []
    for i, (units, hidden) in enumerate(sizes, 1):
        nets.append(_gaussian_net(below, hidden, units, cfg, _q(i)))
        below = units
    x = keras.Input((N_PIXELS,), name="x")
    hs = [keras.Input((units,), name=f"h{i}") for i, (units, _) in enumerate(sizes[:-1], 1)]
    outs = [*nets[0](x)] + [o for net, h in zip(nets[1:], hs) for o in net(h)]
    return keras.Model([x, *hs], outs, name="encoder")


def build_decoder_layers(cfg: ModelConfig) -> keras.Model:
    """[h_L, .., h1] -> [loc, scale (p(h_{L-1}|h_L)), .., loc, scale (p(h1|h2)), then
    p(x|h1)'s outputs: Bernoulli logits, or Gaussian loc, scale]. Built top down."""
    sizes = cfg.stochastic
    nets = [_gaussian_net(sizes[i][0], tuple(reversed(sizes[i][1])), sizes[i - 1][0], cfg, _p(i))
            for i in range(len(sizes) - 1, 0, -1)]  # p(h_i | h_{i+1}), i = L-1 .. 1
    px = build_decoder(dataclasses.replace(cfg, latent=sizes[0][0]))
    px = keras.Model(px.inputs, px.outputs, name=P_X)
    hs = [keras.Input((sizes[i][0],), name=f"h{i + 1}") for i in range(len(sizes) - 1, -1, -1)]
    outs = [o for net, h in zip(nets, hs) for o in net(h)] + _outputs(px(hs[-1]))
    return keras.Model(hs, outs, name="decoder")


def _apply(net, t):
    """A [loc, scale] network (or a call of one) on t [..., d] with any leading axes:
    [..., out] each."""
    lead = ops.shape(t)[:-1]
    out = net(ops.reshape(t, (-1, t.shape[-1])))
    return [_float(ops.reshape(o, (*lead, o.shape[-1]))) for o in out]


def _normal(loc, scale) -> tfd.Distribution:
    return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)


def _given(parent: str, net) -> Callable:
    """N(net(parent)) as a function of one argument named `parent`: JointDistributionNamed
    wires each component to the components its function's arguments name."""
    def conditional(**value):
        return _normal(*_apply(net, value[parent]))
    conditional.__signature__ = inspect.Signature(
        [inspect.Parameter(parent, inspect.Parameter.POSITIONAL_OR_KEYWORD)])
    return conditional


def _weights_stopped(net: keras.Model):
    """net's forward pass with its weights behind a stop-gradient; its input stays live.
    The values are read at call time (on JAX, inside the step's StatelessScope: the traced
    weights), then stopped, and the call runs in a scope of its own that maps every weight of
    net to them."""
    def call(t):
        mapping = [(v, ops.stop_gradient(v.value)) for v in net.variables]
        with keras.StatelessScope(state_mapping=mapping):
            return net(t)
    return call


def posterior_layers(encoder: keras.Model, x) -> tfd.Distribution:
    """q(h1, .., h_L | x) = q(h1|x) q(h2|h1) ..: a joint over {"h1", .., "h<L>"}, batch [B].

    It carries `stopped_parameters()`: the same density with the encoder's weights behind a
    stop-gradient, for the STL and DReG estimators (objectives.stop_parameters). q(h1|x)'s
    parameters are stopped outputs; the upper layers' networks run with stopped weights on
    the live lower sample, so log q at a reparameterized sample keeps the path derivative
    through every h (which a copy of q with stopped parameters would cut at h1) and loses
    only the direct dependence on the weights: the score term."""
    upper = [encoder.get_layer(_q(i)) for i in range(2, len(encoder.inputs) + 1)]
    loc1, scale1 = (_float(t) for t in encoder.get_layer(Q_H1)(x))  # [B, d1] each

    def joint(first, nets):
        return tfd.JointDistributionNamed({
            "h1": first, **{f"h{i}": _given(f"h{i - 1}", n) for i, n in enumerate(nets, 2)}})

    q = joint(_normal(loc1, scale1), upper)
    stopped = [_weights_stopped(n) for n in upper]
    q.stopped_parameters = lambda: joint(
        _normal(ops.stop_gradient(loc1), ops.stop_gradient(scale1)), stopped)
    return q


def prior_layers(decoder: keras.Model) -> tfd.Distribution:
    """p(h1, .., h_L) = p(h_L) p(h_{L-1}|h_L) .. p(h1|h2), p(h_L) = N(0, I): a joint over
    {"h<L>", .., "h1"}. Each p(h_i|h_{i+1}) is a network of the generative path (decoder
    weights)."""
    top = len(decoder.inputs)
    return tfd.JointDistributionNamed({
        f"h{top}": prior(decoder.inputs[0].shape[-1]),
        **{f"h{i}": _given(f"h{i + 1}", decoder.get_layer(_p(i))) for i in range(top - 1, 0, -1)},
    })


class VAE:
    """The one model object of training, evaluation, sampling and the benchmark: the two
    exported networks and the distributions built from them, for any number of stochastic
    layers. `posterior(x)` = q over all latents, `prior()` = p over all latents,
    `decode(z)` = p(x|z) (z: a tensor, or for several layers {"h1", ..}, read at h1).

    A model being measured also carries its card: `info`, the flat model.json content
    (vaelab.card.read_info: objective, k, options, model.*), and `name` (its folder's);
    `VAE.from_folder` reads both. `kind` (bernoulli or gaussian) defaults to the card's
    model.decoder."""

    def __init__(self, encoder: keras.Model, decoder: keras.Model, kind: str | None = None, *,
                 info: dict | None = None, name: str = "model", jit: bool | str = False):
        self.info = dict(info or {})
        self.kind = kind if kind is not None else self.info["model.decoder"]
        self.encoder, self.decoder, self.name = encoder, decoder, name
        # how compiled() compiles on TF (backend.tf_function): False, "fused" or True (all of
        # it in XLA: L_5000 4x slower on the CPU, vaelab.bench --levers xla)
        self.jit = jit
        self._compiled: dict = {}  # compiled(): key -> compiled function
        self.layers = len(encoder.inputs)
        # made here, eagerly: a prior first built inside a traced step would hold that
        # graph's tensors
        self._prior = (prior(encoder.outputs[0].shape[-1]) if self.layers == 1
                       else prior_layers(decoder))
        self._decode = make_decode(self.x_decoder, self.kind)
        # A training step that keeps weights and optimizer slots as arrays of its own between
        # calls (JAX, vaelab.train.make_step) sets this to write them into the Keras
        # variables; call it before reading them. A no-op otherwise.
        self.write_back: Callable[[], None] = lambda: None

    @classmethod
    def build(cls, cfg: ModelConfig, encoder=None, decoder=None) -> "VAE":
        """Fresh networks for cfg (encoder first, then decoder: the seeded initialisation
        order of the one-layer model is what it always was), or the given ones."""
        deep = cfg.layers > 1
        if encoder is None:
            encoder = build_encoder_layers(cfg) if deep else build_encoder(cfg)
        if decoder is None:
            decoder = build_decoder_layers(cfg) if deep else build_decoder(cfg)
        return cls(encoder, decoder, cfg.decoder)

    @classmethod
    def from_folder(cls, folder: str | Path, jit: bool | str = False) -> "VAE":
        """The trained model in `folder` (encoder.keras, decoder.keras, model.json: `load`),
        named after the folder; `jit`: how its measurements compile (evaluate.jit)."""
        encoder, decoder, info = load(folder)
        return cls(encoder, decoder, info=info, name=Path(folder).name, jit=jit)

    @property
    def options(self) -> dict:
        """The objective's per-model options as trained (the card's: m, beta, estimator, ...)."""
        return card.ModelCard.from_info(self.info).options

    @property
    def latent(self) -> int:
        """The prior's latent size (several layers: the top layer's)."""
        return int(self.decoder.inputs[0].shape[-1])

    def compiled(self, key, build):
        """`build(p_z, decode)` -> a function calling the networks, compiled (tf.function or
        jax.jit) once per model and key, so repeated calls (batches, repeats, the benchmark)
        reuse one trace."""
        if key not in self._compiled:
            self._compiled[key] = backend.compile(build(self.prior(), self.decode),
                                                  self.variables, self.jit)
        return self._compiled[key]

    @functools.cached_property
    def x_decoder(self) -> keras.Model:
        """p(x|h1)'s network: the decoder itself for one layer."""
        return self.decoder if self.layers == 1 else self.decoder.get_layer(P_X)

    @functools.cached_property
    def q_nets(self) -> list[keras.Model]:
        """q(h1|x), q(h2|h1), ..: one [loc, scale] network per layer (one layer: the encoder)."""
        if self.layers == 1:
            return [self.encoder]
        return [self.encoder.get_layer(_q(i)) for i in range(1, self.layers + 1)]

    def posterior(self, x) -> tfd.Distribution:
        return posterior(self.encoder, x)

    def prior(self) -> tfd.Distribution:
        return self._prior

    def decode(self, z) -> tfd.Distribution:
        return self._decode(z["h1"] if isinstance(z, dict) else z)

    def mean(self, z):
        """E[x|z] [n, 784] for prior or posterior latents z [n, ...] (a structure for several)."""
        return decoder_mean(self.x_decoder, self.kind, z["h1"] if isinstance(z, dict) else z)

    def sample(self, n: int, seed):
        """n digits from the model, E[x|z] with z ~ p(z) drawn from the stateless `seed`."""
        return self.mean(self._prior.sample(n, seed=seed))

    def reconstruct(self, x):
        """E[x|z] at the posterior mean (several layers: at E_q[h1|x]). [N, 784]; x may be a
        symbolic keras.Input (the model MLflow logs, vaelab.fit.write_outputs)."""
        return decoder_mean(self.x_decoder, self.kind, _float(self.q_nets[0](x)[0]))

    def prior_std(self, n: int = 10_000, seed: int = 0) -> list[np.ndarray]:
        """The marginal std of p over each unit, per stochastic layer, float32 [d] each: 1 for
        a N(0, I) layer; for h_i under a learned p(h_i|h_{i+1}), by the law of total
        variance, Var p(h_i) = E[scale_i(h_{i+1})^2] + Var[loc_i(h_{i+1})] over n fixed
        ancestral draws from the top h_L ~ N(0, I) (Monte Carlo error ~ 1/sqrt(n) relative;
        deterministic for the seed)."""
        if self.layers == 1:
            return [np.ones(self.encoder.outputs[0].shape[-1], np.float32)]
        rng = np.random.default_rng(seed)
        h = rng.standard_normal((n, self.decoder.inputs[0].shape[-1]))
        stds = [np.ones(h.shape[-1], np.float32)]
        for i in range(self.layers - 1, 0, -1):
            loc, scale = posterior_params(self.decoder.get_layer(_p(i)), h.astype(np.float32))
            var = (scale.astype(np.float64) ** 2).mean(0) + loc.astype(np.float64).var(0)
            stds.insert(0, np.sqrt(var).astype(np.float32))
            if i > 1:  # the draws of h_i the layer below is read at
                h = loc + scale * rng.standard_normal(loc.shape)
        return stds

    def posterior_params(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(loc, scale)] of q per stochastic layer, float32 [N, d] each, in units of the
        prior's marginal std of each unit (`prior_std`). One layer and the top layer have a
        N(0, I) prior, so these are q's own loc and scale. A lower layer's prior p(h_i|h_{i+1})
        is learned and its scale is free (a model can widen q(h_i|.) and p(h_i|h_{i+1})
        together at no cost), so Burda et al.'s active-unit threshold (Cov_x E_q[u] > 0.01,
        made for a unit prior) and claim 3's width (against the prior's 1) are read on the
        same scale for every layer. Upper layers: q(h_{i+1}|h_i) at h_i = E_q[h_i|.] (the
        mean path, no sampling; vaelab.evaluate, active units)."""
        if self.layers == 1:
            return [posterior_params(self.encoder, x)]
        stds, out, h = self.prior_std(), [], x
        for i, net in enumerate(self.q_nets):
            loc, scale = posterior_params(net, h)
            out.append((loc / stds[i], scale / stds[i]) if i < self.layers - 1 else (loc, scale))
            h = loc
        return out

    @property
    def groups(self) -> list[tuple[str, list]]:
        """[("encoder", vars), ("decoder", vars)]: every p(h_i|h_{i+1}) belongs to the decoder."""
        return [("encoder", self.encoder.trainable_variables),
                ("decoder", self.decoder.trainable_variables)]

    @property
    def variables(self) -> list:
        return self.encoder.variables + self.decoder.variables


# ---------------------------------------------------------------------------------------
# export: encoder.keras, decoder.keras, model.json

def save(folder: str | Path, encoder: keras.Model, decoder: keras.Model,
         info: "card.ModelCard | dict") -> None:
    """Write the three files into `folder` (the caller makes it a fresh temp folder and renames
    it into place, so a half-saved model is never seen). `info`: the model card (vaelab.card)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder.save(folder / "encoder.keras")
    decoder.save(folder / "decoder.keras")
    content = info.to_info() if isinstance(info, card.ModelCard) else dict(info)
    card.write_info(folder, provenance.stamped(folder, content))  # a relabelled folder will not match


def load(folder: str | Path) -> tuple[keras.Model, keras.Model, dict]:
    """(encoder, decoder, the model card's flat content: vaelab.card.read_info)."""
    folder = Path(folder)
    missing = [n for n in ("encoder.keras", "decoder.keras", card.FILE)
               if not (folder / n).exists()]
    if missing:
        raise MissingModelError(
            f"{folder}: missing {', '.join(missing)}; train it first (dvc repro train@{folder.name})")
    loaded = []
    for name in (card.FILE, "encoder.keras", "decoder.keras"):
        try:
            loaded.append(card.read_info(folder) if name == card.FILE
                          else keras.saving.load_model(folder / name))
        except card.CardError:
            raise
        except Exception as e:  # noqa: BLE001 - Keras reports a damaged zip as "File not found"
            raise DamagedModelError(
                f"{folder / name}: damaged, cannot be read ({type(e).__name__}); retrain it "
                f"(dvc repro -f train@{folder.name})") from None
    info, encoder, decoder = loaded
    return encoder, decoder, info


def load_vae(folder: str | Path) -> tuple[VAE, "card.ModelCard"]:
    """The model in `folder` as one model object, and its card."""
    vae = VAE.from_folder(folder)
    return vae, card.ModelCard.from_info(vae.info, str(Path(folder) / card.FILE))
