"""Every estimator in the article, as pure functions of distributions and tensors.

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
mean) and named per-example terms for logging. Samples are on axis 0: z is [k, B, latent].
Sign conventions: `distortion` = -E log p(x|z) >= 0 for binary data, `rate` = KL(q || p) or
its Monte Carlo estimate; for eq. (4) and (5), bound = -(distortion + rate).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from keras import ops

from . import backend
from .backend import tfd

Tensor = Any  # the active Keras backend's tensor (a TF tensor or a JAX array)
Decode = Callable[[Tensor], tfd.Distribution]


class Bound(NamedTuple):
    bound: Tensor  # [B]
    terms: dict  # name -> [B]


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
    z = q.sample(k, seed=seed)  # [k, B, latent]
    log_px_z = decode(z).log_prob(x)  # [k, B]
    return log_px_z, p_z.log_prob(z), q.log_prob(z)


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


def iwae(x, q, p_z, decode: Decode, k: int = 1, seed=None) -> Bound:
    """Eq. (10)/(11): importance sampling from the posterior, log (1/k) sum_i w_i.
    k = 1 is eq. (5) on the same sample; the bound tightens as k grows."""
    log_px_z, log_pz, log_qz = posterior_log_weights(x, q, p_z, decode, k, seed)
    log_w = log_px_z + log_pz - log_qz  # [k, B]
    return Bound(iwae_from_log_weights(log_w), {
        "distortion": -backend.mean(log_px_z, 0),
        "rate": backend.mean(log_qz - log_pz, 0),
        "ess": effective_sample_size(ops.stop_gradient(log_w)),
    })


def prior_mc(x, q, p_z, decode: Decode, k: int = 1, seed=None) -> Bound:
    """Eq. (7): log (1/k) sum_i p(x|z_i) with z_1..z_k drawn from the PRIOR, shared by the
    whole batch as in the article ("the batch fights over too few z").

    Unbiased for p(x) but, in log space, a lower bound that is hopelessly loose unless k is
    astronomically large, because almost no prior sample explains a given x. It trains the
    decoder only; `q` is ignored.
    """
    z = p_z.sample(k, seed=seed)  # [k, latent]
    log_px_z = decode(z[:, None, :]).log_prob(x)  # [k, 1, 784] vs [B, 784] -> [k, B]
    best = ops.max(log_px_z, 0)
    return Bound(iwae_from_log_weights(log_px_z), {
        "distortion": -best,  # the one z that explains x best: who won the "fight"
        "ess": effective_sample_size(ops.stop_gradient(log_px_z)),
    })


OBJECTIVES: dict[str, Callable[..., Bound]] = {
    "elbo_analytic": elbo_analytic,
    "elbo_mc": elbo_mc,
    "vae_k": vae_k,
    "iwae": iwae,
    "prior_mc": prior_mc,
}

