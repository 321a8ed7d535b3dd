"""Measurements on a trained model: the numbers behind each of the article's claims.

All on the fixed binarized test set (a Gaussian decoder: one fixed dequantization of the
grey values, NLL also in bits per dimension), with fixed seeds, so every model sees the same
bits and the same random numbers:
- L_k for k in {1, 5, 50, ..., evaluate.k}: the importance-weighted bound (eq. 11) with k
  posterior samples; NLL = -L_5000 as in Burda et al. 2015. All L_k come from ONE set of
  evaluate.k log-weights per example: L_k is the mean of the IWAE bound over the
  evaluate.k / k disjoint groups of k samples, which costs nothing extra and has lower
  variance than a single group.
- active units (Burda et al.): Cov_x(E_q[z_u]) > 0.01;
- the width of q(z|x), and the spread of the one-sample ELBO next to the ELBO-NLL gap;
- gradient signal-to-noise ratios per parameter (Rainforth et al. 2018) of encoder and
  decoder, per estimator and k (vaelab.snr);
- log p(x) estimated by sampling the prior (eq. 7) against sampling the posterior, same k.
"""
from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from . import backend, measurements, models, registry, snr
from . import data as vdata
from .backend import tfd
from .config import EvaluateConfig, clipped_prior_k
from . import objectives
from .objectives import iwae_from_log_weights


def test_inputs(test: dict, kind: str, seed: int = 0) -> np.ndarray:
    """The evaluation data, float32 [N, 784]: the fixed bits `xb`, or for a Gaussian decoder
    the grey values dequantized, (pixel + u) / 256 (`data.dequantize`), by one fixed draw of
    u from `seed` (the same for every model): its NLL is in nats of that density on [0, 1)^784,
    `bits_per_dim` converts it to the 8-bit data."""
    if kind == "gaussian":
        return vdata.dequantize(test["x"], seed)
    return test["xb"].astype(np.float32)


# ---------------------------------------------------------------------------------------
# log-weights and the L_k family

def log_weights(m: models.VAE, x: np.ndarray, k: int, chunk: int, batch_size: int, seed: int):
    """log w = log p(x|z) + log p(z) - log q(z|x) for k posterior samples per example,
    float32 [k, N], computed `chunk` samples at a time so memory is bounded by
    chunk * batch_size * 784 floats whatever k is. Also returns the analytic KL [N] (two
    stochastic layers, which have none: its Monte Carlo estimate from the last chunk)."""
    chunk_fn = m.compiled(("log_weights", chunk),
                          lambda p_z, decode: _log_weights_fn(m, p_z, decode, chunk))
    out = np.empty((k, len(x)), np.float32)
    kl = np.empty(len(x), np.float32)
    for b, start in enumerate(range(0, len(x), batch_size)):
        xb = ops.convert_to_tensor(x[start:start + batch_size])
        # every chunk issued before one is read: an accelerator computes while the host copies
        outs = [chunk_fn(xb, backend.seed(seed, b * 100_003 + c)) for c in range(-(-k // chunk))]
        for s0, (lw, kl_b) in zip(range(0, k, chunk), outs):
            n = min(chunk, k - s0)
            out[s0:s0 + n, start:start + len(xb)] = np.asarray(lw)[:n]
        kl[start:start + len(xb)] = np.asarray(kl_b)
    return out, kl


def _log_weights_fn(m: models.VAE, p_z, decode, chunk):
    def chunk_fn(xb, s):
        q = m.posterior(xb)
        z = q.sample(chunk, seed=s)  # [chunk, B, latent] (two layers: {h1, h2} of them)
        log_px_z = decode(z).log_prob(xb)  # [chunk, B]
        if m.layers > 1:
            log_pz, log_qz = p_z.log_prob(z), q.log_prob(z)
            return log_px_z + log_pz - log_qz, backend.mean(log_qz - log_pz, 0)
        return log_px_z + p_z.log_prob(z) - q.log_prob(z), tfd.kl_divergence(q, p_z)

    return chunk_fn


def l_k_groups(log_w: np.ndarray, k: int) -> np.ndarray:
    """The IWAE_k bound of each disjoint group of k samples in log_w [K, N]: [K // k, N]."""
    groups = log_w.shape[0] // k
    if groups < 1:
        raise ValueError(f"L_{k} needs at least {k} log-weights, got {log_w.shape[0]}")
    grouped = log_w[:groups * k].reshape(groups, k, -1)  # [groups, k, N]
    return np.asarray(iwae_from_log_weights(ops.convert_to_tensor(np.moveaxis(grouped, 1, 0))))


def l_k(log_w: np.ndarray, k: int) -> np.ndarray:
    """Mean IWAE_k bound [N] over the disjoint groups of k samples in log_w [K, N]."""
    return l_k_groups(log_w, k).mean(0)


def mean_se(log_w: np.ndarray, k: int, shared: bool = False) -> float:
    """Monte Carlo standard error of ONE k-sample estimate of the mean bound over the N
    digits (what `own_bound` computes), measured from the spread of the disjoint groups of
    k samples in log_w [K, N]; nan with fewer than two groups. Posterior samples are drawn
    independently per digit, so the per-digit variances pool (stable even with few groups);
    prior samples are shared by all digits (eq. 7), so the group means' spread is used."""
    if log_w.shape[0] // k < 2:
        return float("nan")
    g = l_k_groups(log_w, k)  # [groups, N]
    if shared:
        return float(g.mean(1).std(ddof=1))
    return float(np.sqrt(g.var(axis=0, ddof=1).mean() / g.shape[1]))


def tightest_se(log_w: np.ndarray, shared: bool = False) -> float:
    """Standard error of L_K from all K samples, from its two halves: by the delta method the
    variance of an IWAE_k estimate falls as 1/k, so Var(L_K) ~ Var(L_{K/2}) / 2."""
    return mean_se(log_w, log_w.shape[0] // 2, shared) / np.sqrt(2) if len(log_w) >= 2 \
        else float("nan")


def bound_ladder(log_w: np.ndarray, ks) -> dict[int, float]:
    """{k: mean over examples of L_k}."""
    return {k: float(l_k(log_w, k).mean()) for k in ks if k <= log_w.shape[0]}


# ---------------------------------------------------------------------------------------
# the posterior

def posterior_stats(m: models.VAE, x: np.ndarray) -> dict:
    """Active units and the width of q(z|x) on them. Two stochastic layers: per layer too
    (`active_units_h1`, `_h2`, `posterior_std_median_h1`, `_h2`; h2's at h1 = E_q[h1|x],
    models.VAE.posterior_params), the other figures over both layers' units."""
    layers = m.posterior_params(x)  # [(loc, scale) [N, d]] per layer
    per_layer = {}
    if len(layers) > 1:
        for i, (loc_i, scale_i) in enumerate(layers, 1):
            act = models.active_mask(loc_i)
            per_layer[f"active_units_h{i}"] = int(act.sum())
            per_layer[f"posterior_std_median_h{i}"] = (float(np.median(scale_i[:, act]))
                                                       if act.any() else float("nan"))
    loc = np.concatenate([loc_i for loc_i, _ in layers], axis=1)  # [N, all units]
    scale = np.concatenate([scale_i for _, scale_i in layers], axis=1)
    active = models.active_mask(loc)
    widths = scale[:, active].ravel() if active.any() else np.array([np.nan])
    return {
        **per_layer,
        "active_units": int(active.sum()),
        "posterior_std_active": widths,  # kept for the histogram
        "posterior_std_median": float(np.median(widths)),
        "posterior_std_q1": float(np.percentile(widths, 25)),
        "posterior_std_q3": float(np.percentile(widths, 75)),
        "posterior_std_all_median": float(np.median(scale)),
    }


# ---------------------------------------------------------------------------------------
# prior sampling (eq. 7) as an estimator of log p(x)

def prior_log_likelihoods(m: models.VAE, x: np.ndarray, k: int, chunk: int, batch_size: int,
                          seed: int) -> np.ndarray:
    """log p(x|z_i) for k draws z_i ~ p(z) shared by all examples, as in eq. (7). [k, N].
    Grouped like log-weights (`bound_ladder`), it gives eq. (7)'s estimate for every k."""
    # [k, latent] (two layers: {h1, h2}, h1 drawn from p(h1|h2))
    z = m.prior().sample(k, seed=backend.seed(seed, 7))
    # [chunk, 1, 784] against [B, 784] broadcasts to [chunk, B]
    chunk_fn = m.compiled(("prior", chunk), lambda p_z, decode: (
        lambda zc, xb: decode(keras.tree.map_structure(lambda t: t[:, None], zc)).log_prob(xb)))

    out = np.empty((k, len(x)), np.float32)
    for start in range(0, len(x), batch_size):
        xb = ops.convert_to_tensor(x[start:start + batch_size])
        outs = [chunk_fn(keras.tree.map_structure(lambda t: t[s0:s0 + chunk], z), xb)
                for s0 in range(0, k, chunk)]  # all issued first
        for s0, ll in zip(range(0, k, chunk), outs):
            out[s0:s0 + chunk, start:start + len(xb)] = np.asarray(ll)
    return out


def own_bound(m: models.VAE, x: np.ndarray, seed: int, batch_size: int = 100) -> float:
    """The model's training objective (its own k) on x: the L it minimised."""
    p_z, decode = m.prior(), m.decode
    objective = objectives.objective(m.info["objective"], **m.options)
    k = int(m.info["k"])
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb = ops.convert_to_tensor(x[i:i + batch_size])
        q = m.posterior(xb)
        total += float(ops.sum(objective(xb, q, p_z, decode, k, backend.seed(seed, i)).bound))
    return total / len(x)


# ---------------------------------------------------------------------------------------

def prior_samples(folder: str | Path, n: int, seed: int) -> np.ndarray:
    """n digits from the model in `folder`: z ~ p(z), shown as E[x|z]. [n, 784] in [0, 1]."""
    return prior_samples_of(models.VAE.from_folder(folder), n, seed)


def prior_samples_of(m: models.VAE, n: int, seed: int) -> np.ndarray:
    return np.asarray(m.sample(n, backend.seed(seed, 0)))  # z ~ p(z), E[x|z]


def reconstructions(m: models.VAE, x: np.ndarray) -> np.ndarray:
    """E[x|z] at z = the posterior mean: what the model keeps of each digit. [N, 784]."""
    return np.asarray(m.reconstruct(ops.convert_to_tensor(x)))  # two layers: at E_q[h1|x]


def loss_check(info: dict, log_w: np.ndarray, prior_lw: np.ndarray, nll: float,
               nll_prior: float) -> dict:
    """What claim 6 (the loss upper-bounds -log p(x)) compares the loss with, and the Monte
    Carlo error of that comparison.

    The loss and NLL = -L_K are both upper bounds on -log p(x) in expectation; only one
    that is tighter than the loss's by construction can test it: L_K with K >= the model's
    k from the same sampler (L_k grows with k). Which one is fixed by the model's objective
    alone, never by comparing the two estimates' values (the better of two stochastic
    bounds is no bound): for posterior-trained models the NLL (posterior sampling, L_K with
    K = evaluate.k); for eq. (7) (prior_mc) the prior-sampling estimate at the largest k.
    `nll_ref_by` says which, "" when that sampler has fewer than the model's k samples and
    the comparison cannot be made. `loss_se`, `nll_ref_se`: standard errors of the two
    means over the test digits, measured from the log-weights' spread (`mean_se`).
    `info`: the model's card (models.VAE.info)."""
    k = int(info["k"])
    if registry.has(info, proposal="prior"):
        loss_se = mean_se(prior_lw, k, shared=True)
        if len(prior_lw) < k:
            return {"nll_ref": nll_prior, "nll_ref_se": float("nan"), "loss_se": loss_se,
                    "_nll_ref_by": ""}
        return {"nll_ref": nll_prior, "nll_ref_se": tightest_se(prior_lw, shared=True),
                "loss_se": loss_se, "_nll_ref_by": f"prior sampling, k={len(prior_lw)}"}
    # eq. (4)'s own bound has an analytic KL; one log-weight's spread bounds its noise
    loss_se = mean_se(log_w, k)
    if len(log_w) < k:
        return {"nll_ref": nll, "nll_ref_se": float("nan"), "loss_se": loss_se,
                "_nll_ref_by": ""}
    return {"nll_ref": nll, "nll_ref_se": tightest_se(log_w), "loss_se": loss_se,
            "_nll_ref_by": f"NLL, L_{len(log_w)}"}


def evaluate_model(m: models.VAE, x: np.ndarray, cfg: EvaluateConfig) -> dict:
    """Every per-model measurement; arrays for the figures are under keys starting '_'."""
    x = x[:cfg.n_test]
    parts: dict[str, float] = {}  # wall seconds of each measurement (every one ends on the host)

    def timed(part, fn, *args):
        tic = time.perf_counter()
        result = fn(*args)
        parts[part] = parts.get(part, 0.0) + time.perf_counter() - tic
        return result

    log_w, kl = timed("log_weights", log_weights, m, x, cfg.k, min(cfg.chunk, cfg.k),
                      cfg.batch_size, cfg.seed)
    seconds = parts["log_weights"]
    prior_ks = clipped_prior_k(cfg)
    ladder_ks = sorted({1, 5, 50, *prior_ks, cfg.k})
    ladder = bound_ladder(log_w, ladder_ks)
    elbo = float(log_w.mean())  # L_1 averaged over all draws
    nll = -ladder[cfg.k]
    draws = log_w[:min(cfg.elbo_draws, cfg.k)]  # one-sample ELBOs (eq. 5), per example
    post = timed("posterior", posterior_stats, m, x)
    out = {
        "nll": nll,
        "elbo": elbo,
        **{f"L_{k}": v for k, v in ladder.items() if k in (1, 5, 50, cfg.k)},
        "own_bound": timed("own_bound", own_bound, m, x, cfg.seed),
        "rate": float(kl.mean()),
        # E_q[log w] = E_q[log p(x|z)] - KL, so the expected reconstruction term follows.
        "distortion": float(-(log_w.mean() + kl.mean())),
        "gap_elbo_nll": float(-elbo - nll),
        "elbo_std_one_sample": (float(np.median(draws.std(axis=0, ddof=1)))
                                if len(draws) > 1 else float("nan")),
        "eval_seconds": seconds,
        "eval_images_per_s": len(x) / seconds,
        **{k: v for k, v in post.items() if not isinstance(v, np.ndarray)},
        "_posterior_std_active": post["posterior_std_active"],
    }
    out["loss_minus_nll"] = -out["own_bound"] - nll
    if m.kind == "gaussian":
        # x is dequantized grey (test_inputs): the NLL as a bound on -log P of the 8-bit
        # values, in nats and in bits per dimension (log 256 per pixel added back)
        out["nll_discrete"] = vdata.discrete_nll(nll, x.shape[1])
        out["bits_per_dim"] = vdata.bits_per_dim(nll, x.shape[1])
    # gradient SNR per parameter, one digit at a time (Rainforth et al. 2018): vaelab.snr
    s = timed("snr", snr.model_snr, m, x, cfg.snr_k, cfg.snr_estimators, cfg.snr_digits,
              cfg.snr_repeats, cfg.seed)
    out.update(snr.flat_metrics(s["result"]))
    out["_snr"] = s["result"]  # nested, for the report's table and figure
    prior_lw = timed("prior", prior_log_likelihoods, m, x, max(prior_ks), min(cfg.chunk, cfg.k),
                     cfg.batch_size, cfg.seed)  # [max prior k, N]
    prior = bound_ladder(prior_lw, prior_ks)
    out.update(loss_check(m.info, log_w, prior_lw, nll, -prior[max(prior_ks)]))
    out["_prior_vs_posterior"] = {k: (prior[k], ladder[k]) for k in prior_ks}
    for k in prior_ks:
        out[f"logpx_prior_k{k}"] = prior[k]
        out[f"logpx_posterior_k{k}"] = ladder[k]
    out["_seconds"] = parts  # not a metric: the GPU check's breakdown
    return out


def measure(m: models.VAE, test: dict, n_train: int, cfg: EvaluateConfig, run: dict):
    """One model's work for `evaluate@<name>`: every measurement on the test digits ->
    (the Measurements record, the arrays of the report's figures). `run`: the model's
    training run (tracking.RunLogger.describe), kept in the record for the report."""
    x = test_inputs(test, m.kind, cfg.seed)
    result = evaluate_model(m, x, cfg)
    record = measurements.Measurements.from_results(
        m.name, m.info, result, cfg, min(cfg.n_test, len(x)), n_train, run)
    arrays = {"posterior_std_active": result["_posterior_std_active"],
              "reconstructions": reconstructions(m, x[:12]),
              "digits": test["xb"][:12].astype(np.float32)}
    return record, arrays
