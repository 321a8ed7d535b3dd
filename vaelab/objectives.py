"""Every estimator in the article and the tighter bounds after it, as pure functions of
distributions and tensors. Which exist, and their options, is vaelab.registry.

Notation follows the usual VAE papers, not the article (which swaps p and q):
q(z|x) is the encoder's posterior, p(z) the prior, p(x|z) the decoder.

Each objective takes
    x          [B, 784]   the data batch
    q          q(z|x), batch [B], event [latent]   (ignored by `prior_mc`)
    p_z        p(z), event [latent]
    decode     z [..., latent] -> p(x|z), batch [...], event [784]
    k          number of samples
    seed       a stateless seed (shape [2] int tensor), so a step is a pure function of it
and returns a `Bound`: the per-example lower bound on log p(x) [B] (the loss is its negative
mean), named per-example terms for logging and, where a group of variables follows another
gradient than the bound's (PIWAE, STL, DReG), that group's surrogate [B]. Samples are on axis 0: z is [k, B, latent].
Sign conventions: `distortion` = -E log p(x|z) >= 0 for binary data, `rate` = KL(q || p) or
its Monte Carlo estimate; for eq. (4) and (5), bound = -(distortion + rate).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple

import keras
from keras import ops

from . import backend, registry
from .backend import tfd

Tensor = Any  # the active Keras backend's tensor (a TF tensor or a JAX array)
Decode = Callable[[Tensor], tfd.Distribution]


class Bound(NamedTuple):
    bound: Tensor  # [B]
    terms: dict  # name -> [B]
    # group of variables ("encoder", "decoder") -> [B]: what that group ascends when it is
    # not the bound itself (PIWAE's two targets, STL's and DReG's encoder surrogates). The
    # training step and the SNR measurement read it; neither names an objective.
    surrogates: dict | None = None


# --------------------------------------------------------------------------------------
# pure functions of log-weights, log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)

def iwae_from_log_weights(log_w: Tensor) -> Tensor:
    """Eq. (11): log (1/k) sum_i w_i, with the k samples on axis 0. [k, B] -> [B].

    logsumexp never exponentiates a large number, so log-weights of -500 nats are fine.
    """
    k = ops.cast(ops.shape(log_w)[0], log_w.dtype)
    return ops.logsumexp(log_w, axis=0) - ops.log(k)


def elbo_from_log_weights(log_w: Tensor) -> Tensor:
    """The k-sample average ELBO, (1/k) sum_i log w_i. [k, B] -> [B]. By Jensen it is
    <= iwae_from_log_weights on the same log-weights."""
    return backend.mean(log_w, axis=0)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """(sum w)^2 / sum w^2 per example, in [1, k]: how many samples really count. [k,B] -> [B]."""
    return ops.exp(2.0 * ops.logsumexp(log_w, 0) - ops.logsumexp(2.0 * log_w, 0))


# --------------------------------------------------------------------------------------
# sampling

def posterior_log_weights(x, q, p_z, decode: Decode, k: int, seed):
    """Draw z_1..z_k ~ q(z|x) by reparameterization and return the three log-densities.

    `tfd.Normal.sample` computes loc + scale * eps, so gradients flow through z into the
    encoder's loc and scale: this is eq. (12).
    Returns log p(x|z), log p(z), log q(z|x), each [k, B].
    """
    return _draw(x, q, p_z, decode, k, seed)[1:]


def _draw(x, q, p_z, decode: Decode, k: int, seed):
    """z [k, B, latent] ~ q(z|x) and log p(x|z), log p(z), log q(z|x) at it, [k, B] each."""
    z = q.sample(k, seed=seed)
    return z, decode(z).log_prob(x), p_z.log_prob(z), q.log_prob(z)


# --------------------------------------------------------------------------------------
# gradient estimators: surrogates whose gradient is the estimator, per group of variables

def stop_parameters(q: tfd.Distribution) -> tfd.Distribution:
    """q with every parameter behind a stop_gradient: the same density, whose log_prob at a
    reparameterized z carries the path derivative through z only (STL and DReG need it).
    A joint q(h1, h2 | x) cannot be stopped by copying (q(h2|h1)'s parameters are network
    outputs at the sampled h1): it brings its own `stopped_parameters()` from where its
    networks are known (vaelab.models.posterior_layers); a joint without one is refused rather
    than returned unstopped (the standard estimator under another name)."""
    if isinstance(q, tfd.JointDistribution):
        stopped = getattr(q, "stopped_parameters", None)
        if stopped is None:
            raise NotImplementedError("stl/dreg need a joint q that brings stopped_parameters()")
        return stopped()
    def stop(v):
        if isinstance(v, tfd.Distribution):
            return stop_parameters(v)
        return ops.stop_gradient(v) if hasattr(v, "dtype") and hasattr(v, "shape") else v
    return q.copy(**{n: stop(v) for n, v in q.parameters.items() if v is not None})


def _groups(log_w: Tensor, m: int) -> Tensor:
    """[m*k, B] -> [k, m, B]: the m disjoint groups of k consecutive samples, on axis 1."""
    mk = ops.shape(log_w)[0]
    return ops.transpose(ops.reshape(log_w, (m, mk // m, -1)), (1, 0, 2))


def _miwae(log_w: Tensor, m: int) -> Tensor:
    """Mean over m groups of the IWAE bound of each group. [m*k, B] -> [B]."""
    if m == 1:
        return iwae_from_log_weights(log_w)
    return backend.mean(iwae_from_log_weights(_groups(log_w, m)), axis=0)


def _dreg_surrogate(log_w: Tensor, log_w_path: Tensor, m: int) -> Tensor:
    """Tucker et al. 2018, eq. (7): per group, sum_i stop(w~_i)^2 log w_i, where log w_i has
    q's parameters stopped (`log_w_path`) and w~ are the normalized weights of its group;
    averaged over the m groups. Its gradient with respect to the encoder's parameters has
    the expectation of the IWAE bound's, and does not vanish as k grows. [m*k, B] -> [B]."""
    g = _groups(ops.stop_gradient(log_w), m)  # [k, m, B]
    w_norm = ops.exp(g - ops.logsumexp(g, axis=0, keepdims=True))  # [k, m, B]
    return backend.mean(ops.sum(w_norm**2 * _groups(log_w_path, m), axis=0), axis=0)


def _encoder_target(log_w, log_w_path, m: int, estimator: str) -> Tensor:
    """What the encoder ascends for an IWAE-type bound of m groups, by estimator. [B]."""
    if estimator == "standard":
        return _miwae(log_w, m)
    if estimator == "stl":
        return _miwae(log_w_path, m)  # same values, the score term gone
    if estimator == "dreg":
        return _dreg_surrogate(log_w, log_w_path, m)
    raise ValueError(f"unknown gradient estimator {estimator!r}")


def _sample_log_weights(x, q, p_z, decode: Decode, n: int, seed, estimator: str):
    """n reparameterized samples: log w [n, B], the same with q's parameters stopped (for
    STL and DReG; None for the standard estimator, which does not need it) and the
    per-example terms distortion, rate and ess [B]."""
    z, log_px_z, log_pz, log_qz = _draw(x, q, p_z, decode, n, seed)
    log_w = log_px_z + log_pz - log_qz  # [n, B]
    log_w_path = None
    if estimator != "standard":
        log_w_path = log_px_z + log_pz - stop_parameters(q).log_prob(z)
    terms = {"distortion": -backend.mean(log_px_z, 0),
             "rate": backend.mean(log_qz - log_pz, 0),
             "ess": effective_sample_size(ops.stop_gradient(log_w))}
    return log_w, log_w_path, terms


# --------------------------------------------------------------------------------------
# the objectives

def elbo_analytic(x, q, p_z, decode: Decode, k: int = 1, seed=None) -> Bound:
    """Eq. (4): one posterior sample for log p(x|z), the KL term in closed form.
    With k > 1 the reconstruction term is averaged over k samples."""
    z = q.sample(k, seed=seed)  # [k, B, latent]
    distortion = -backend.mean(decode(z).log_prob(x), axis=0)  # [B]
    rate = tfd.kl_divergence(q, p_z)  # [B]
    return Bound(-(distortion + rate), {"distortion": distortion, "rate": rate})


def elbo_mc(x, q, p_z, decode: Decode, k: int = 1, seed=None) -> Bound:
    """Eq. (5): every term from the same single sample, KL included:
    log p(x|z) + log p(z) - log q(z|x), z ~ q(z|x)."""
    log_px_z, log_pz, log_qz = posterior_log_weights(x, q, p_z, decode, k, seed)
    distortion = -backend.mean(log_px_z, 0)  # [B]
    rate = backend.mean(log_qz - log_pz, 0)  # [B], a one-sample estimate of the KL
    return Bound(-(distortion + rate), {"distortion": distortion, "rate": rate})


def vae_k(x, q, p_z, decode: Decode, k: int = 1, seed=None) -> Bound:
    """The ELBO averaged over k posterior samples (Burda et al.'s "VAE, k samples" column):
    same expectation as eq. (5), lower variance, no tighter."""
    log_px_z, log_pz, log_qz = posterior_log_weights(x, q, p_z, decode, k, seed)
    log_w = log_px_z + log_pz - log_qz  # [k, B]
    return Bound(elbo_from_log_weights(log_w), {
        "distortion": -backend.mean(log_px_z, 0),
        "rate": backend.mean(log_qz - log_pz, 0),
    })


def miwae(x, q, p_z, decode: Decode, k: int = 1, seed=None, m: int = 1,
          estimator: str = "standard") -> Bound:
    """MIWAE(m, k) (Rainforth et al. 2018): the mean of m independent IWAE-k bounds, m*k
    samples per digit. m = 1 is eq. (11); k = 1 is the m-sample ELBO (vae_k).
    The encoder ascends the bound's gradient by `estimator`, the decoder the bound's."""
    log_w, log_w_path, terms = _sample_log_weights(x, q, p_z, decode, m * k, seed, estimator)
    bound = _miwae(log_w, m)
    if estimator == "standard":
        return Bound(bound, terms)
    return Bound(bound, terms, {"encoder": _encoder_target(log_w, log_w_path, m, estimator),
                                "decoder": bound})


def iwae(x, q, p_z, decode: Decode, k: int = 1, seed=None,
         estimator: str = "standard") -> Bound:
    """Eq. (10)/(11): importance sampling from the posterior, log (1/k) sum_i w_i.
    k = 1 is eq. (5) on the same sample; the bound tightens as k grows."""
    return miwae(x, q, p_z, decode, k, seed, 1, estimator)


def ciwae(x, q, p_z, decode: Decode, k: int = 1, seed=None, beta: float = 0.5,
          estimator: str = "standard") -> Bound:
    """CIWAE(beta) (Rainforth et al. 2018): beta ELBO + (1 - beta) IWAE-k on the same k
    samples. beta = 1 is the k-sample ELBO, beta = 0 the IWAE-k bound. With stl/dreg the
    ELBO part's encoder gradient is STL's (DReG with one sample is STL)."""
    log_w, log_w_path, terms = _sample_log_weights(x, q, p_z, decode, k, seed, estimator)
    elbo = elbo_from_log_weights(log_w)
    bound = beta * elbo + (1.0 - beta) * iwae_from_log_weights(log_w)
    terms["elbo"] = elbo
    if estimator == "standard":
        return Bound(bound, terms)
    enc = (beta * elbo_from_log_weights(log_w_path)
           + (1.0 - beta) * _encoder_target(log_w, log_w_path, 1, estimator))
    return Bound(bound, terms, {"encoder": enc, "decoder": bound})


def piwae(x, q, p_z, decode: Decode, k: int = 1, seed=None, m: int = 1,
          estimator: str = "standard") -> Bound:
    """PIWAE(m, k) (Rainforth et al. 2018): one step, two gradient targets on the same m*k
    samples: the decoder ascends IWAE-(m k), the tighter bound (reported as `bound`); the
    encoder ascends MIWAE(m, k), whose gradient keeps its signal-to-noise ratio."""
    log_w, log_w_path, terms = _sample_log_weights(x, q, p_z, decode, m * k, seed, estimator)
    bound = iwae_from_log_weights(log_w)  # IWAE-(m k)
    terms["miwae"] = _miwae(log_w, m)
    return Bound(bound, terms, {"encoder": _encoder_target(log_w, log_w_path, m, estimator),
                                "decoder": bound})


def prior_mc(x, q, p_z, decode: Decode, k: int = 1, seed=None) -> Bound:
    """Eq. (7): log (1/k) sum_i p(x|z_i) with z_1..z_k drawn from the PRIOR, shared by the
    whole batch as in the article ("the batch fights over too few z").

    Unbiased for p(x) but, in log space, a lower bound that is hopelessly loose unless k is
    astronomically large, because almost no prior sample explains a given x. It trains the
    decoder only; `q` is ignored.
    """
    z = p_z.sample(k, seed=seed)  # [k, latent] (two layers: {h1, h2} of them)
    z = keras.tree.map_structure(lambda t: t[:, None], z)  # [k, 1, latent]
    log_px_z = decode(z).log_prob(x)  # [k, 1, 784] vs [B, 784] -> [k, B]
    return Bound(iwae_from_log_weights(log_px_z), {
        # -max_i log p(x|z_i): the one z that explains x best, who won the "fight". Not a
        # distortion (that is an expectation under q), hence its own name.
        "nll_best_z": -ops.max(log_px_z, 0),
        "ess": effective_sample_size(ops.stop_gradient(log_px_z)),
    })


FUNCTIONS: dict[str, Callable[..., Bound]] = {
    "elbo_analytic": elbo_analytic,
    "elbo_mc": elbo_mc,
    "vae_k": vae_k,
    "iwae": iwae,
    "miwae": miwae,
    "ciwae": ciwae,
    "piwae": piwae,
    "prior_mc": prior_mc,
}
assert set(FUNCTIONS) == set(registry.OBJECTIVES), "vaelab.registry and FUNCTIONS disagree"
assert all(set(s.hparam_names) <= set(inspect.signature(FUNCTIONS[n]).parameters)
           for n, s in registry.OBJECTIVES.items()), "an objective lacks a registered hparam"


def objective(name: str, **options) -> Callable[..., Bound]:
    """The registered objective `name` with the per-model options that apply to it (m,
    beta, estimator, as vaelab.registry says) bound: (x, q, p_z, decode, k, seed) -> Bound."""
    kw = {n: v for n, v in options.items() if n in registry.OBJECTIVES[name].hparam_names}
    return functools.partial(FUNCTIONS[name], **kw) if kw else FUNCTIONS[name]


def group_targets(b: Bound, groups=("encoder", "decoder")) -> dict:
    """Per example [B], what each group of variables ascends: its surrogate, or the bound.
    The per-digit gradient SNR (vaelab.snr) differentiates these one digit at a time."""
    return {g: (b.surrogates or {}).get(g, b.bound) for g in groups}


def surrogate_losses(b: Bound, groups=("encoder", "decoder")) -> dict | None:
    """The scalar loss whose gradient each group of variables follows, -mean(surrogate);
    None when every group follows the bound itself (one gradient of -mean(bound))."""
    if b.surrogates is None:
        return None
    return {g: -ops.mean(t) for g, t in group_targets(b, groups).items()}
