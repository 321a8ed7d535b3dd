"""Gradient signal-to-noise ratio per parameter, as Rainforth et al. 2018 measure it.

"Tighter Variational Bounds are Not Necessarily Better" (Rainforth et al. 2018): for the
gradient estimate of ONE data point (M = 1) with K importance samples, draw it `repeats`
times with fresh samples and take, per parameter j,

    SNR_j = |mean_r g_rj| / std_r g_rj

then average SNR_j over a fixed set of data points (their choice: SNR per point, averaged),
and look at its distribution over the parameters. The theory: under the standard
reparameterized IWAE-K gradient the encoder's SNR falls like K^(-1/2) and the decoder's grows
like K^(+1/2) for large K; DReG's encoder SNR does not fall (it grows like K^(+1/2)).

What each group's gradient is of: the target that group ascends under the model's objective
and estimator, read from `objectives.group_targets` (the bound itself, or a surrogate: STL,
DReG, PIWAE) - no objective or estimator is named here.

Dropped parameters: a parameter whose gradient is exactly 0 in every draw has SNR 0/0 and is
left out of the statistics (for that data point; a parameter that is 0/0 on every data point
counts in `share_dropped`). On a trained MLP these are first-layer encoder weights of pixels
that are 0 in the digit (binarized digits are mostly background: the weight multiplies x_i = 0),
weights into ReLU units that are off for the digit (the encoder is deterministic in x, so the
unit is off in every draw), and for a model that never trained its encoder (eq. 7) nothing
special: the IWAE-K gradient of its encoder is measured like any other's.

Two backends of the draws:
- `model_draws`: a trained Keras model. Per-example gradients are not free in Keras (a batch
  gives the sum), so one draw (a digit, K samples, one gradient per group) is a function of
  its seed, mapped over the repeats' seeds in one vectorized call (backend.map_rows): the
  same seeds, the same samples, the same gradients as one call per draw, up to float
  rounding (about 1e-5 relative, from batched matmuls), at a fraction of the calls.
- `Toy`: Rainforth et al.'s 20-dimensional Gaussian problem with its parameters held once per
  repeat (variables [R, ...]), so one gradient of the sum over R copies IS the R per-copy
  gradients: all repeats in one call.

`python -m vaelab.snr --toy --out reports/figures/snr_toy.png` prints the toy's slopes next to
the theory and draws the figure.
"""
from __future__ import annotations

import argparse
import time
import warnings
from typing import Callable

import numpy as np

from . import registry
from .cost import snr_blocks

THEORY = registry.SNR_SLOPE  # the asymptotic slopes the measured ones are printed next to
GROUPS = ("encoder", "decoder")


# ---------------------------------------------------------------------------------------
# the statistic

def per_parameter_snr(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """draws [R, P] (R gradient draws of P parameters) -> (SNR [P], dropped [P] bool).

    SNR_j = |mean| / std (std with ddof=1); a parameter with every draw exactly 0 is 0/0:
    `dropped`, SNR nan. A nonzero constant gradient has SNR inf (kept: it is above 1)."""
    g = np.asarray(draws, np.float64)
    if g.shape[0] < 2:
        raise ValueError("a standard deviation needs at least two draws")
    dropped = ~np.any(g != 0, axis=0)
    mean, std = g.mean(0), g.std(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.abs(mean) / std
    out[dropped] = np.nan
    return out, dropped


def average_over_points(snrs: list[np.ndarray]) -> np.ndarray:
    """[P] per data point -> [P]: the mean over the points where the parameter is defined
    (nan only where it is 0/0 on every point)."""
    s = np.stack(snrs)  # [D, P]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": all-nan
        return np.nanmean(s, axis=0)


def summarize(snr: np.ndarray) -> dict:
    """The distribution over parameters of the (point-averaged) SNR [P], nan = dropped."""
    keep = snr[~np.isnan(snr)]
    n = len(snr)
    if not len(keep):
        return {"median": float("nan"), "q1": float("nan"), "q3": float("nan"),
                "share_below_1": float("nan"), "share_dropped": 1.0, "n_params": n}
    q1, med, q3 = np.percentile(keep, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3),
            "share_below_1": float(np.mean(keep < 1.0)),
            "share_dropped": float(1 - len(keep) / n), "n_params": n}


def noise_floor(repeats: int) -> float:
    """E|mean| / std of R draws of a gradient whose true SNR is 0: sqrt(2 / (pi R)). A
    per-parameter SNR near it is not resolved by R draws (|mean| / std is biased upwards)."""
    return float(np.sqrt(2.0 / (np.pi * repeats)))


def rms_debiased(snrs: list[np.ndarray], repeats: int) -> float:
    """sqrt of the mean over points and parameters of SNR^2 - 1/R: E[mean^2] = mu^2 +
    sigma^2 / R, so this removes the noise floor's bias from the mean square SNR, and averaging
    over all parameters resolves a small SNR that no single parameter's R draws can (used for
    the toy's encoder, whose SNR is near the floor). nan when not positive."""
    s = np.concatenate([v[~np.isnan(v)] for v in snrs])
    s = s[np.isfinite(s)]
    ms = float(np.mean(s**2) - 1.0 / repeats) if len(s) else float("nan")
    return float(np.sqrt(ms)) if ms > 0 else float("nan")


def fit_slope(ks, values) -> float:
    """Least-squares slope of log(value) against log(K); nan with fewer than two usable K."""
    ks, v = np.asarray(ks, np.float64), np.asarray(values, np.float64)
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(ks[ok]), np.log(v[ok]), 1)[0])


def measure(draws: Callable[[int, int, str, int], dict], n_points: int, ks, estimators) -> dict:
    """draws(point, k, estimator, seed) -> {group: [R, P]} -> per estimator, per group:
    {"k": {k: summary}, "slope": slope of log median vs log k}."""
    out = {}
    for e in estimators:
        per_k = {g: {} for g in GROUPS}
        for k in ks:
            snrs = {g: [] for g in GROUPS}
            for d in range(n_points):
                got = draws(d, k, e, 1000 * d + k)
                for g in GROUPS:
                    snrs[g].append(per_parameter_snr(got[g])[0])
                repeats = len(got[GROUPS[0]])
            for g in GROUPS:
                per_k[g][k] = {**summarize(average_over_points(snrs[g])),
                               "rms_debiased": rms_debiased(snrs[g], repeats),
                               "noise_floor": noise_floor(repeats)}
        out[e] = {g: {"k": per_k[g],
                      "slope": fit_slope(list(per_k[g]), [s["median"] for s in per_k[g].values()]),
                      "slope_rms": fit_slope(list(per_k[g]),
                                             [s["rms_debiased"] for s in per_k[g].values()])}
                  for g in GROUPS}
    return out


def flat_metrics(result: dict) -> dict:
    """measure()'s nested result -> flat metric names, e.g. snr_standard_encoder_k50_median,
    snr_dreg_encoder_slope."""
    out = {}
    for e, groups in result.items():
        for g, r in groups.items():
            for k, s in r["k"].items():
                for name in ("median", "q1", "q3", "share_below_1", "share_dropped"):
                    out[f"snr_{e}_{g}_k{k}_{name}"] = s[name]
            out[f"snr_{e}_{g}_slope"] = r["slope"]
    return out


def theory(estimator: str, group: str) -> float | None:
    return THEORY.get((estimator, group))


def table(result: dict) -> list[str]:
    """Markdown rows: estimator, group, median [q1, q3] per K, slope vs theory."""
    lines = []
    for e, groups in result.items():
        for g, r in groups.items():
            t = theory(e, g)
            cells = [f"{s['median']:.3g} [{s['q1']:.3g}, {s['q3']:.3g}]"
                     for s in r["k"].values()]
            lines.append(f"| {e} | {g} | " + " | ".join(cells)
                         + f" | {r['slope']:+.2f} | {r.get('slope_rms', float('nan')):+.2f} "
                         f"| {'-' if t is None else f'{t:+.1f}'} |")
    return lines


# ---------------------------------------------------------------------------------------
# a trained model

def model_draws(m, x: np.ndarray, repeats: int, seed: int):
    """draws(point, k, estimator, seed) for measure(): `repeats` gradients of the IWAE-k
    objective on the single digit x[point], with the model's encoder and decoder.
    m: a models.VAE."""
    from keras import ops

    from . import backend, objectives

    enc_vars, dec_vars = m.encoder.trainable_variables, m.decoder.trainable_variables

    def build_for(k, estimator):
        def build(p_z, decode):
            f = objectives.objective("iwae", estimator=estimator)

            def losses(xb, s):
                b = f(xb, m.posterior(xb), p_z, decode, k, s)
                return -ops.mean(b.bound), objectives.surrogate_losses(b), None

            # one forward pass per draw, one backward pass per distinct target: the
            # standard estimator's groups share -bound, DReG's encoder has its surrogate
            grads = backend.grads_by_group(losses, (("encoder", enc_vars), ("decoder", dec_vars)))

            def flat(gs, vs):
                return ops.concatenate([ops.reshape(ops.zeros_like(v) if t is None else t, [-1])
                                        for t, v in zip(gs, vs)], 0)

            def both(xb, s):  # the same seed, the same samples, for both groups
                gs, _, _ = grads(xb, s)
                return flat(gs["encoder"], enc_vars), flat(gs["decoder"], dec_vars)

            def block(xb, ss):  # ss [n, 2]: n draws -> ([n, P_enc], [n, P_dec])
                return backend.map_rows(lambda s: both(xb, s), ss)

            return block
        return build

    def draws(point, k, estimator, s0):
        fn = m.compiled(("snr_per_digit", k, estimator), build_for(k, estimator))
        xb = ops.convert_to_tensor(x[point:point + 1])
        # blocks of draws bound memory (each holds a [K, 784] decoder output and its
        # gradient) as evaluate.chunk does for L_5000; the check stage's estimate reads the
        # same split. The default (K <= 500, 60 repeats) is one call per digit, K, estimator.
        calls, n = snr_blocks(repeats, k)
        rows = [[seed + s0, r] for r in range(calls * n)]  # draw r's seed, as one call each
        outs = [fn(xb, backend.seeds(rows[i * n:(i + 1) * n])) for i in range(calls)]
        return {g: np.concatenate([np.asarray(o[j]) for o in outs])[:repeats]
                for j, g in enumerate(GROUPS)}

    return draws


def model_snr(m, x: np.ndarray, ks, estimators, digits: int, repeats: int, seed: int) -> dict:
    """measure() on the first `digits` digits of x; adds "seconds"."""
    tic = time.perf_counter()
    out = measure(model_draws(m, x[:digits], repeats, seed), min(digits, len(x)), ks, estimators)
    return {"result": out, "seconds": time.perf_counter() - tic}


# ---------------------------------------------------------------------------------------
# Rainforth et al.'s Gaussian toy problem (section 4 of the paper)

class Toy:
    """z ~ N(mu, I), x | z ~ N(z, I) in `dim` dimensions; encoder q(z|x) = N(A x + b, 2/3 I).

    The true model has mu* = the data mean (mu ~ N(0, I) here), the exact posterior is
    N((x + mu)/2, I/2), so A* = I/2, b* = mu/2 (the encoder's covariance is fixed at 2/3,
    not 1/2, as in the paper). Parameters start at the optimum plus N(0, noise^2) per
    entry. Each parameter is held once per repeat ([R, ...] variables, all equal), so the
    gradient of the sum over R copies of a point is R independent per-copy gradients.
    float64."""

    def __init__(self, dim: int = 20, n: int = 1024, noise: float = 0.01, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.mu_true = rng.normal(size=dim)
        z = self.mu_true + rng.normal(size=(n, dim))
        self.x = z + rng.normal(size=(n, dim))
        mu_opt = self.x.mean(0)  # the maximum-likelihood mu
        self.params = {"A": 0.5 * np.eye(dim) + noise * rng.normal(size=(dim, dim)),
                       "b": 0.5 * mu_opt + noise * rng.normal(size=dim),
                       "mu": mu_opt + noise * rng.normal(size=dim)}

    def draws(self, points: np.ndarray, repeats: int):
        """draws(point, k, estimator, seed) for measure(), all repeats in one gradient."""
        import keras
        from keras import ops

        from . import backend, objectives
        from .backend import tfd

        dim, R = self.dim, repeats
        var = {n: keras.Variable(np.broadcast_to(v, (R, *v.shape)).copy(), dtype="float64")
               for n, v in self.params.items()}
        sigma_q = float(np.sqrt(2.0 / 3.0))

        def draws(point, k, estimator, s):
            f = objectives.objective("iwae", estimator=estimator)
            x = ops.convert_to_tensor(np.broadcast_to(points[point], (R, dim)).copy())

            def target(group):
                def loss():
                    loc = ops.einsum("rij,rj->ri", var["A"], x) + var["b"]
                    q = tfd.Independent(tfd.Normal(loc, sigma_q * ops.ones_like(loc)), 1)
                    mu = var["mu"] + 0.0  # a tensor (JAX: the traced value, not the Variable)
                    p_z = tfd.Independent(tfd.Normal(mu, ops.ones_like(mu)), 1)

                    def decode(z):
                        return tfd.Independent(tfd.Normal(z, ops.ones_like(z)), 1)

                    b = f(x, q, p_z, decode, k, backend.seed(s, 17))
                    return -ops.sum(objectives.group_targets(b)[group])
                return loss

            out = {}
            for g, names in (("encoder", ("A", "b")), ("decoder", ("mu",))):
                _, gs = backend.value_and_grad(target(g), [var[n] for n in names])()
                out[g] = np.concatenate([np.asarray(t).reshape(R, -1) for t in gs], axis=1)
            return out

        return draws

    def snr(self, ks=(1, 10, 100, 1000), estimators=("standard", "dreg"), points: int = 4,
            repeats: int = 200) -> dict:
        return measure(self.draws(self.x[:points], repeats), points, ks, estimators)


def main(argv=None):
    p = argparse.ArgumentParser(description="Gradient SNR on Rainforth et al.'s toy problem")
    p.add_argument("--toy", action="store_true", required=True)
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 100, 1000])
    p.add_argument("--estimators", nargs="+", default=list(registry.ESTIMATORS))
    p.add_argument("--points", type=int, default=8)
    p.add_argument("--repeats", type=int, default=500)
    p.add_argument("--out", default=None, help="PNG of median SNR vs K")
    a = p.parse_args(argv)
    tic = time.perf_counter()
    r = Toy().snr(a.k, a.estimators, a.points, a.repeats)
    print(f"toy problem (Rainforth et al. 2018), {a.points} points x {a.repeats} draws, "
          f"{time.perf_counter() - tic:.1f}s")
    print("median [q1, q3] over parameters of the per-parameter SNR; slope of log median SNR "
          "vs log K, and of the debiased RMS SNR (vaelab.snr.rms_debiased: below the noise "
          f"floor {noise_floor(a.repeats):.3f} of {a.repeats} draws the median cannot fall)")
    print("| estimator | group | " + " | ".join(f"K={k}" for k in a.k)
          + " | slope | slope (debiased RMS) | theory |")
    print("|---|---|" + "---|" * (len(a.k) + 3))
    print("\n".join(table(r)))
    if a.out:
        from . import figures
        figures.snr_vs_k(a.out, {"toy": r}, "Gradient SNR, Rainforth et al.'s Gaussian toy")
        print(f"figure -> {a.out}")


if __name__ == "__main__":
    from .quiet import silence_tf
    silence_tf()
    main()
