"""The article's claims as verdicts computed from measured numbers, and the report itself.

Every verdict is one of HOLDS / DOES NOT HOLD / NOT MEASURED and comes from a rule written
next to it in the report, applied to the numbers of the models' measurement records
(metrics/eval/<name>.json, vaelab.measurements). Nothing here knows what the article
expects, and nothing here measures: the `report` stage re-renders in seconds.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import literature, registry
from .config import DEFAULT_BUDGET, DEFAULT_UPDATES, EvaluateConfig, updates
from .registry import SNR_SLOPE as SNR_THEORY

HOLDS, FAILS, UNMEASURED = "HOLDS", "DOES NOT HOLD", "NOT MEASURED"

# Burda et al. 2015, table 1, MNIST, one stochastic layer (50 units, 784-200-200-50):
# test NLL in nats (L_5000) and active units, for k = 1, 5, 50.
def budget_epochs(info: dict) -> int:
    """The epochs a model was given: those it trained, or its train.epochs when early
    stopping ended it sooner (it stopped because more did not help, not for want of time)."""
    if info.get("stopped_early"):
        return int(info["train.epochs"])
    return int(info.get("epochs_trained", info["train.epochs"]))


def budget_updates(info: dict, n_train: int) -> int:
    """The parameter updates a model was given: budget_epochs over n_train digits in its
    train.batch_size."""
    return updates(budget_epochs(info), n_train,
                   int(info.get("train.batch_size", DEFAULT_BUDGET["train.batch_size"])))


def budget_shortfalls(infos: dict, cfg, n_test: int, n_train: int) -> list[str]:
    """What falls short of DEFAULT_BUDGET, one phrase each; [] for a full run. Training is
    counted in parameter updates (config.DEFAULT_UPDATES): the same 200 epochs are a short
    run on 400 digits and a long one on 50,000."""
    out = []
    short = {n: budget_updates(i, n_train) for n, i in infos.items()
             if budget_updates(i, n_train) < DEFAULT_UPDATES}
    if short:
        out.append(", ".join(f"{n} {u:,}" for n, u in short.items())
                   + f" of {DEFAULT_UPDATES:,} parameter updates ({n_train:,} training digits)")
    if cfg.k < DEFAULT_BUDGET["evaluate.k"]:
        out.append(f"NLL = -L_{cfg.k}, not -L_{DEFAULT_BUDGET['evaluate.k']}")
    if n_test < DEFAULT_BUDGET["evaluate.n_test"]:
        out.append(f"{n_test} of {DEFAULT_BUDGET['evaluate.n_test']} test digits")
    return out


def summary(results: dict, infos: dict) -> dict:
    """metrics/summary.json, the one metrics file `dvc exp show` lists: per model the
    headline numbers, so the table fits a terminal (every figure: metrics/eval/<name>.json)."""
    return {n: {"nll": round(r["nll"], 3), "elbo": round(r["elbo"], 3),
                **({"bits_per_dim": round(r["bits_per_dim"], 4)} if "bits_per_dim" in r
                   else {}),  # Gaussian decoders: NLL of the 8-bit data in bits/dim
                "active_units": r["active_units"],
                "train_min": (round(infos[n]["train_seconds"] / 60, 2)
                              if "train_seconds" in infos[n] else None)}
            for n, r in results.items()}


@dataclass
class Claim:
    number: int
    title: str
    rule: str
    evidence: str
    verdict: str


# the models the claims compare, as capabilities of their objectives (vaelab.registry.has
# keywords): a claim never names an objective, so a new one with the capabilities is judged
ELBO = {"family": "elbo"}  # eq. (4), eq. (5) or the k-sample average
ELBO_1 = {"family": "elbo", "k_is_1": True}
ELBO_1_ANALYTIC = {**ELBO_1, "analytic_kl": True}  # eq. (4)
ELBO_1_MC = {**ELBO_1, "analytic_kl": False}  # eq. (5)
IWAE = {"family": "iwae"}  # any importance-weighted bound
PLAIN_IWAE = {"plain_iwae": True}  # eq. (11) itself
POSTERIOR = {"proposal": "posterior"}
PRIOR = {"proposal": "prior"}  # eq. (7)


def _select(infos: dict, **capabilities) -> list[str]:
    """The models whose objective has these capabilities (vaelab.registry.has)."""
    return [n for n, i in infos.items() if registry.has(i, **capabilities)]


def _vaes(infos: dict) -> list[str]:
    """Models trained on an ELBO (eq. 4, eq. 5, or its k-sample average)."""
    return _select(infos, **ELBO)


def _spread(results, names) -> float | None:
    vals = [results[n]["nll"] for n in names]
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def claim_1(results, infos, seed_std: float | None = None) -> Claim:
    rule = ("|NLL(eq. 4) - NLL(eq. 5)| <= max(1% of the NLL, 2 x the seed-to-seed std of "
            "the NLL: measured in this run where several seeds of an objective ran, else "
            "evaluate.nll_seed_std, measured by a seed sweep (README))")
    a, b = _select(infos, **ELBO_1_ANALYTIC), _select(infos, **ELBO_1_MC)
    if not a or not b:
        return _claim(1, rule, "needs a one-sample ELBO model with the KL in closed form "
                      "(eq. 4, e.g. elbo_analytic) and one with a one-sample KL (eq. 5, e.g. "
                      "elbo_mc)", UNMEASURED)
    na = float(np.mean([results[n]["nll"] for n in a]))
    nb = float(np.mean([results[n]["nll"] for n in b]))
    spreads = [s for s in (_spread(results, a), _spread(results, b)) if s is not None]
    spread, source = ((max(spreads), "in this run") if spreads
                      else (seed_std, "evaluate.nll_seed_std"))
    tol = max(0.01 * na, 2 * spread if spread else 0.0)
    ev = (f"NLL eq. (4) {na:.2f} ({', '.join(a)}), eq. (5) {nb:.2f} ({', '.join(b)}): "
          f"difference {abs(na - nb):.2f} nats, tolerance {tol:.2f}; seed-to-seed std "
          + (f"{spread:.2f} ({source})" if spread else "not measured (one seed per objective)"))
    return _claim(1, rule, ev, HOLDS if abs(na - nb) <= tol else FAILS)


def reference_model(results, infos) -> str:
    """"The trained VAE" of the article: the first eq. (4) model, else the best model
    trained on posterior samples."""
    vaes = _select(infos, family="elbo", analytic_kl=True)
    if vaes:
        return vaes[0]
    post = [n for n in results if not registry.has(infos[n], proposal="prior")] or list(results)
    return min(post, key=lambda n: results[n]["nll"])


def claim_2(results, infos) -> Claim:
    rule = ("the prior-trained model's NLL is >= 10 nats worse than the best posterior-trained "
            "model's, each model's NLL by the estimator its objective fixes before any number "
            "is seen: posterior importance sampling (-L_K, K = evaluate.k) for posterior-trained "
            "models, eq. (7)'s own prior sampling at the largest prior_k for prior-trained ones "
            "(their encoder is untrained, a poor proposal: -L_K is shown, not used; picking the "
            "better of the two by value would no longer be a lower bound), AND for the "
            "reference VAE the prior-sampling estimate of log p(x) at the largest k stays >= 10 "
            "nats below posterior importance sampling at the same k")
    prior = _select(infos, **PRIOR)
    post = [n for n in results if n not in prior]
    if not post:
        return _claim(2, rule, "needs at least one posterior-trained model", UNMEASURED)
    best = min(post, key=lambda n: results[n]["nll"])
    ref = reference_model(results, infos)
    pvp = results[ref]["_prior_vs_posterior"]
    kmax = max(pvp)
    p_est, q_est = pvp[kmax]
    gap_est = q_est - p_est
    ev = (f"for {ref}: log p(x) by prior sampling {p_est:.1f} vs posterior sampling "
          f"{q_est:.1f} nats at k={kmax} (gap {gap_est:.1f})")
    ok_est = gap_est >= 10
    if prior:
        def own(n):  # eq. (7)'s estimator at its largest k: -log p(x) in nats
            shown = results[n]["_prior_vs_posterior"]
            return -shown[max(shown)][0], max(shown)
        pn_name = min(prior, key=lambda n: own(n)[0])  # the best prior-trained model
        pn, pk = own(pn_name)
        ev = (f"NLL of the prior-trained model ({pn_name}) {pn:.2f} (prior sampling, k={pk}; "
              f"-L_K by posterior sampling {results[pn_name]['nll']:.2f}, not used) vs {best} "
              f"{results[best]['nll']:.2f} ({pn - results[best]['nll']:+.2f}); " + ev)
        return _claim(2, rule, ev, HOLDS if (pn - results[best]["nll"] >= 10 and ok_est)
                      else FAILS)
    return _claim(2, rule + " (no prior-trained model: estimator part only)", ev,
                  HOLDS if ok_est else FAILS)


def claim_3(results, infos) -> Claim:
    rule = ("median std of q(z|x) on active units < 0.1 (10x narrower than the prior's 1), "
            "and the one-sample ELBO's spread is smaller than the ELBO-NLL gap")
    names = _select(infos, **ELBO_1) or list(results)
    rows, ok = [], True
    for n in names:
        r = results[n]
        rows.append(f"{n}: median std {r['posterior_std_median']:.3f} "
                    f"(quartiles {r['posterior_std_q1']:.3f}-{r['posterior_std_q3']:.3f}) on "
                    f"{r['active_units']} active units; one-sample ELBO std "
                    f"{r['elbo_std_one_sample']:.2f} vs gap {r['gap_elbo_nll']:.2f} nats")
        ok &= r["posterior_std_median"] < 0.1 and r["elbo_std_one_sample"] < r["gap_elbo_nll"]
        trace = infos[n].get("posterior_std_by_epoch")
        if trace and len(trace) > 1:
            shown = dict(trace[i] for i in (0, len(trace) // 2, -1))  # an epoch once
            rows[-1] += (" (over training, on the valid set: " + ", ".join(
                f"epoch {e}: {v:.3f}" for e, v in shown.items()) + ")")
    return _claim(3, rule, "; ".join(rows), HOLDS if ok else FAILS)


def claim_4(results, infos) -> Claim:
    rule = ("every IWAE model has a lower NLL and at least as many active units as the "
            "best VAE model (eq. 4/5 or vae_k), and among IWAE models NLL falls as k grows")
    iw = sorted(_select(infos, **PLAIN_IWAE), key=lambda n: int(infos[n]["k"]))
    va = _vaes(infos)
    if not iw or not va:
        return _claim(4, rule, "needs an iwae model and a VAE model", UNMEASURED)
    best = min(va, key=lambda n: results[n]["nll"])
    ok = all(results[n]["nll"] < results[best]["nll"]
             and results[n]["active_units"] >= results[best]["active_units"] for n in iw)
    nlls = [results[n]["nll"] for n in iw]
    ok &= all(b < a for a, b in zip(nlls, nlls[1:]))
    ev = (f"{best}: NLL {results[best]['nll']:.2f}, {results[best]['active_units']} active "
          "units; " + ", ".join(f"{n} (k={infos[n]['k']}): NLL {results[n]['nll']:.2f}, "
                                f"{results[n]['active_units']} active" for n in iw))
    return _claim(4, rule, ev, HOLDS if ok else FAILS)


def _plain_iwae(infos: dict) -> list[str]:
    """Models trained on the IWAE bound with the standard estimator (the article's IWAE)."""
    return [n for n in _select(infos, **PLAIN_IWAE)
            if registry.estimator_of(infos[n]) == "standard"]


def _snr_median(r: dict, group: str, k: int, estimator: str = "standard"):
    return r.get(f"snr_{estimator}_{group}_k{k}_median")


def claim_5(results, infos, snr_k) -> Claim:
    rule = ("the IWAE model's ELBO-NLL gap is larger than the best VAE model's, and on the "
            "IWAE model (largest k, standard estimator) the median over parameters of the "
            "per-digit gradient SNR (Rainforth et al.: |mean| / std over repeated draws for "
            "one digit, averaged over the test digits) of the IWAE-k gradient at "
            f"k={max(snr_k)} is below that at k={min(snr_k)} for the encoder, above it for "
            "the decoder")
    iw = _plain_iwae(infos)
    va = _vaes(infos)
    n = max(iw, key=lambda n: int(infos[n]["k"])) if iw else None
    lo = min(snr_k)
    if (not iw or not va or len(snr_k) < 2
            or _snr_median(results[n], "encoder", lo) is None):
        return _claim(5, rule, "needs an iwae model, a VAE model, two SNR k values and "
                      "the standard estimator in evaluate.snr_estimators", UNMEASURED)
    best = min(va, key=lambda v: results[v]["nll"])
    r = results[n]
    gap_ok = r["gap_elbo_nll"] > results[best]["gap_elbo_nll"]
    enc = [_snr_median(r, "encoder", k) for k in snr_k]
    dec = [_snr_median(r, "decoder", k) for k in snr_k]
    enc_ok, dec_ok = enc[-1] < enc[0], dec[-1] > dec[0]
    ev = (f"gap {n} {r['gap_elbo_nll']:.2f} vs {best} {results[best]['gap_elbo_nll']:.2f} nats; "
          f"{n} median SNR encoder " + " / ".join(f"{v:.3g}" for v in enc)
          + ", decoder " + " / ".join(f"{v:.3g}" for v in dec)
          + f" at k = {' / '.join(map(str, snr_k))} (slopes of log SNR vs log k: encoder "
          f"{_f(r.get('snr_standard_encoder_slope'))}, decoder "
          f"{_f(r.get('snr_standard_decoder_slope'))}; theory -0.5 / +0.5)")
    return _claim(5, rule, ev, HOLDS if gap_ok and enc_ok and dec_ok else FAILS)


# `++` adds a models: entry or overrides it (DVC 3.67's -S is Hydra's override syntax: a
# plain key that params.yaml lacks is refused)
FIX_RUN = ("dvc exp run -S '++models.iwae={objective: iwae, k: 50}' "
           "-S '++models.miwae={objective: miwae, k: 10, m: 5}' "
           "-S '++models.piwae={objective: piwae, k: 10, m: 5}' "
           "-S '++models.iwae_dreg={objective: iwae, k: 50, estimator: dreg}'")


def _fixes(infos: dict) -> list[str]:
    """Models of the importance-weighted family (vaelab.registry) that are not the plain
    IWAE: another objective (MIWAE, CIWAE, PIWAE) or another encoder estimator (STL, DReG)."""
    plain = set(_plain_iwae(infos))
    return [n for n in _select(infos, **IWAE) if n not in plain]


def _samples(info: dict) -> int:
    return registry.spec_of(info).samples(int(info["k"]), int(info.get("m", 1)))


def claim_7(results, infos, seed_std: float | None = None) -> Claim:
    tol = 2 * seed_std if seed_std else 1.0
    rule = ("companion to claim 5: every model trained with a fix (an importance-weighted "
            "objective other than IWAE, or the STL/DReG encoder estimator) has a smaller "
            "ELBO-NLL gap than the plain IWAE model with the same number of samples per digit "
            "(m x k), and an NLL at most "
            f"{tol:.2f} nats above it (2 x evaluate.nll_seed_std, or 1 nat if unset)")
    fixes = _fixes(infos)
    if not fixes:
        return _claim(7, rule, "no MIWAE/CIWAE/PIWAE/STL/DReG model in `models:`; "
                      f"to measure it: `{FIX_RUN}`", UNMEASURED)
    rows, ok, compared = [], True, 0
    plain = _plain_iwae(infos)
    for n in fixes:
        same = [p for p in plain if _samples(infos[p]) == _samples(infos[n])
                and layers(infos[p]) == layers(infos[n])]
        if not same:
            rows.append(f"{n}: no plain iwae model with k={_samples(infos[n])} to compare with")
            continue
        ref = min(same, key=lambda p: results[p]["nll"])
        a, b = results[n], results[ref]
        this = a["gap_elbo_nll"] < b["gap_elbo_nll"] and a["nll"] <= b["nll"] + tol
        ok &= this
        compared += 1
        rows.append(f"{n} vs {ref}: gap {a['gap_elbo_nll']:.2f} vs {b['gap_elbo_nll']:.2f} "
                    f"nats, NLL {a['nll']:.2f} vs {b['nll']:.2f} ({a['nll'] - b['nll']:+.2f})")
    verdict = (HOLDS if ok else FAILS) if compared else UNMEASURED
    if not compared:
        rows.append(f"to measure it: `{FIX_RUN}`")
    return _claim(7, rule, "; ".join(rows), verdict)


def claim_6(results, infos) -> Claim:
    rule = ("for every model, its loss L (minus its own bound) >= an estimate of the NLL "
            "that is tighter by construction, chosen by the model's objective alone: L_K from "
            "the same sampler with K >= the model's k (posterior sampling, K = evaluate.k, for "
            "posterior-trained models; prior sampling at the largest evaluate.prior_k for "
            "eq. 7) - 3 Monte Carlo standard errors of the difference (measured from the "
            "spread of the log-weights over disjoint groups of samples)")
    rows, ok, measured = [], True, True
    for n, r in results.items():
        loss, ref = -r["own_bound"], r.get("nll_ref", r["nll"])
        se = float(np.hypot(r.get("loss_se", np.nan), r.get("nll_ref_se", np.nan)))
        by = r.get("_nll_ref_by", "NLL")
        if not by or not np.isfinite(se):
            measured = False
            rows.append(f"{n}: L {loss:.2f}, NLL {r['nll']:.2f}: not measurable (evaluate.k "
                        f"below the model's k {infos[n]['k']}, or too few samples for a spread)")
            continue
        ok &= loss >= ref - 3 * se
        rows.append(f"{n}: L {loss:.2f} vs {ref:.2f} ({by}), L - ref {loss - ref:+.2f}, "
                    f"tolerance {3 * se:.2f}")
    verdict = (HOLDS if ok else FAILS) if measured or not ok else UNMEASURED
    return _claim(6, rule, "; ".join(rows), verdict)


def layers(info: dict) -> int:
    """Stochastic layers of a model (model.json's model.layers; absent for one layer)."""
    return int(info.get("model.layers", 1))


def _family(info: dict) -> str | None:
    spec = registry.spec_of(info)
    return spec.family if spec else None


def _counterpart(info: dict, other: dict) -> bool:
    """Same bound with another number of layers: the same family, samples per digit and
    estimator (a two-layer VAE has no analytic KL, so elbo_mc meets elbo_analytic)."""
    same = (_family(info) == _family(other) and _samples(info) == _samples(other)
            and registry.estimator_of(info) == registry.estimator_of(other))
    return same and (_family(info) == "elbo" or info["objective"] == other["objective"])


TWO_LAYER_RUN = ("dvc exp run -S '++models.vae_2l={objective: elbo_mc, k: 1, layers: 2}' "
                 "-S '++models.iwae_2l={objective: iwae, k: 50, layers: 2}'")


def claim_8(results, infos) -> Claim:
    rule = ("Burda et al. 2015's two-layer shape: every two-layer model has a lower NLL than "
            "the best one-layer model with the same bound (family, samples per digit, "
            "estimator); and the two-layer IWAE models have a lower NLL and at least as many "
            "active units (h1 + h2, each unit's activity read in units of its prior's std) "
            "as the best two-layer VAE")
    two = [n for n in results if layers(infos[n]) == 2 and _family(infos[n]) in ("elbo", "iwae")]
    if not two:
        return _claim(8, rule, f"no two-layer model in `models:`; to measure it: "
                      f"`{TWO_LAYER_RUN}`", UNMEASURED)
    rows, ok, compared = [], True, 0
    for n in two:
        ones = [o for o in results if layers(infos[o]) == 1 and _counterpart(infos[n], infos[o])]
        if not ones:
            rows.append(f"{n}: no one-layer model with the same bound to compare with")
            continue
        ref = min(ones, key=lambda o: results[o]["nll"])
        a, b = results[n], results[ref]
        ok &= a["nll"] < b["nll"]
        compared += 1
        rows.append(f"{n} vs {ref}: NLL {a['nll']:.2f} vs {b['nll']:.2f} "
                    f"({a['nll'] - b['nll']:+.2f}), active units {_units(a)} vs {b['active_units']}")
    vaes = [n for n in two if _family(infos[n]) == "elbo"]
    iws = [n for n in two if _family(infos[n]) == "iwae"]
    if vaes and iws:
        best = min(vaes, key=lambda v: results[v]["nll"])
        for n in iws:
            a, b = results[n], results[best]
            ok &= a["nll"] < b["nll"] and a["active_units"] >= b["active_units"]
            compared += 1
            rows.append(f"two layers, {n} vs {best}: NLL {a['nll']:.2f} vs {b['nll']:.2f}, "
                        f"active units {_units(a)} vs {_units(b)}")
    else:
        rows.append("IWAE vs VAE with two layers: needs a two-layer model of each")
    verdict = (HOLDS if ok else FAILS) if compared else UNMEASURED
    return _claim(8, rule, "; ".join(rows), verdict)


def _units(r: dict) -> str:
    if "active_units_h1" in r:  # several layers: per layer, h1 first
        per = [f"h{i} {r[f'active_units_h{i}']}" for i in
               itertools.takewhile(lambda i: f"active_units_h{i}" in r, itertools.count(1))]
        return f"{r['active_units']} ({' + '.join(per)})"
    return str(r["active_units"])


@dataclass(frozen=True)
class ClaimSpec:
    """A claim of the article, judged by `judge(results, infos, *inputs)` -> Claim."""

    number: int
    statement: str  # the article's claim, the report's heading
    judge: Callable[..., Claim]
    needs: tuple[dict, ...]  # the models it compares, as capabilities (vaelab.registry.has)
    inputs: tuple[str, ...] = ()  # what else it reads: "snr_k" (evaluate.snr_k), "seed_std"
    # False: judged on the one-stochastic-layer models only, the article's setting (on all
    # models where none has one layer), so a two-layer model is never mixed into its
    # comparisons; True: on every model
    all_layers: bool = False


# The claims, in the report's order. Adding one is an entry here plus its judge, which
# returns _claim(number, rule, evidence, verdict): the report, verdicts.json, the stage's
# printout and the MLflow tags list it.
CLAIMS: dict[int, ClaimSpec] = {c.number: c for c in (
    ClaimSpec(1, "Eq. (4) (analytic KL) and eq. (5) (one-sample KL) train to similar models",
              claim_1, (ELBO_1_ANALYTIC, ELBO_1_MC), ("seed_std",)),
    ClaimSpec(2, "Sampling from the prior (eq. 7) fails", claim_2, (POSTERIOR, PRIOR)),
    ClaimSpec(3, "The posterior is narrow, so one sample is enough", claim_3, (ELBO_1,)),
    ClaimSpec(4, "IWAE gives a better generative model", claim_4, (PLAIN_IWAE, ELBO)),
    ClaimSpec(5, "IWAE gives a weaker encoder", claim_5, (PLAIN_IWAE, ELBO), ("snr_k",)),
    # about each model alone
    ClaimSpec(6, "The loss L upper-bounds -E[log p(x)]", claim_6, (), all_layers=True),
    ClaimSpec(7, "The fixes keep the encoder (MIWAE, CIWAE, PIWAE, STL, DReG vs IWAE)", claim_7,
              (IWAE, PLAIN_IWAE), ("seed_std",)),
    ClaimSpec(8, "Two stochastic layers give a better model, and IWAE still beats the VAE "
              "there", claim_8, (ELBO, IWAE), all_layers=True),
)}


def _claim(number: int, rule: str, evidence: str, verdict: str) -> Claim:
    return Claim(number, CLAIMS[number].statement, rule, evidence, verdict)


def all_claims(results: dict, infos: dict, snr_k, seed_std: float | None = None) -> list[Claim]:
    """Every claim of CLAIMS, judged in its order."""
    one = [n for n in results if layers(infos[n]) == 1] or list(results)
    inputs = {"snr_k": snr_k, "seed_std": seed_std}
    out = []
    for c in CLAIMS.values():
        names = list(results) if c.all_layers else one
        out.append(c.judge({n: results[n] for n in names}, {n: infos[n] for n in names},
                           *(inputs[i] for i in c.inputs)))
    return out


def _f(v, digits=2):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _g(v):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3g}"


def switched_table(results: dict, infos: dict) -> list[str]:
    """Objective switching (Burda et al. table 2): per model trained from another's weights,
    the NLL and active units before (the source model's) and after; [] when there is none."""
    rows = [(n, infos[n]["init_from"]) for n in results
            if infos[n].get("init_from") in results]
    if not rows:
        return []
    out = ["", "Objective switching: models trained on from another model's weights "
           "(before = the source model as evaluated here, after = this model).", "",
           "| model | objective | from | NLL before | NLL after | active units before "
           "| active units after |", "|---|---|---|---|---|---|---|"]
    for n, src in rows:
        a, b = results[src], results[n]
        out.append(f"| {n} | {infos[n]['objective']} | {src} | {_f(a['nll'])} | "
                   f"{_f(b['nll'])} | {a['active_units']} | {b['active_units']} |")
    return out


def snr_section(results: dict, snr_k, estimators, digits=None, repeats=None) -> list[str]:
    """The per-parameter gradient SNR table: per model, estimator and group the median
    [quartiles] over parameters at each k, the share below 1 and dropped (0/0) at the
    largest k, and the slope of log median SNR vs log k next to the theory."""
    how = (f"{digits} test digits x {repeats} draws each" if digits and repeats else
           "a fixed set of test digits")
    lines = ["## Gradient signal-to-noise ratio (Rainforth et al. 2018)", "",
             "Per parameter j, SNR_j = |mean g_j| / std g_j over repeated draws of the IWAE-k "
             "gradient of ONE digit (M = 1), averaged over " + how + "; each group's gradient "
             "is of what it ascends under the estimator (vaelab.snr). Cells: median [q1, q3] "
             "over parameters. Dropped: parameters whose gradient is exactly 0 in every draw "
             "for every digit (0/0: first-layer weights of pixels that are 0 in those digits, "
             "units that are off). Theory (large k): standard estimator encoder -1/2, decoder "
             "+1/2; DReG's encoder does not fall (+1/2).", "",
             "| model | estimator | group | " + " | ".join(f"k={kk}" for kk in snr_k)
             + f" | SNR<1 at k={max(snr_k)} | dropped | slope | theory |",
             "|---|---|---|" + "---|" * (len(snr_k) + 4)]
    for n, r in results.items():
        for e in estimators:
            for g in ("encoder", "decoder"):
                key = f"snr_{e}_{g}_k"
                if f"{key}{max(snr_k)}_median" not in r:
                    continue
                cells = [f"{_g(r.get(f'{key}{kk}_median'))} [{_g(r.get(f'{key}{kk}_q1'))}, "
                         f"{_g(r.get(f'{key}{kk}_q3'))}]" for kk in snr_k]
                t = SNR_THEORY.get((e, g))
                lines.append(f"| {n} | {e} | {g} | " + " | ".join(cells)
                             + f" | {_f(r.get(f'{key}{max(snr_k)}_share_below_1'))} "
                             f"| {_f(r.get(f'{key}{max(snr_k)}_share_dropped'))} "
                             f"| {_f(r.get(f'snr_{e}_{g}_slope'))} "
                             f"| {'-' if t is None else f'{t:+.1f}'} |")
    return lines


def _literature_family(info: dict) -> str | None:
    """The published row family of a model: "elbo" for a k-sample ELBO, "iwae" for the plain
    IWAE bound with the standard gradient (what Burda et al. trained); None otherwise."""
    if registry.has(info, family="elbo"):
        return "elbo"
    if registry.has(info, plain_iwae=True) and registry.estimator_of(info) == "standard":
        return "iwae"
    return None


def literature_rows(results: dict, infos: dict, n_train: int) -> list[dict]:
    """Each model with a published counterpart, with what `literature.table` sets beside it:
    its NLL and active units per layer, and its budget (data, passes, batch, updates,
    schedule, device) from its model card."""
    rows = []
    for n, r in results.items():
        i, fam = infos[n], _literature_family(infos[n])
        if fam is None or literature.published(layers(i), fam, int(i["k"])) is None:
            continue  # eq. (7), DReG, or a k Burda et al. did not train (k = 2, say)
        passes = i.get("epochs_trained") or i.get("train.epochs")
        batch = i.get("train.batch_size")
        schedule = i.get("train.schedule", "constant")
        if schedule == "burda":
            schedule += f", {i.get('train.schedule_stages')} stages"
        units = ([r[f"active_units_h{h}"] for h in range(1, layers(i) + 1)]
                 if f"active_units_h{layers(i)}" in r else [r["active_units"]])
        rows.append(dict(name=n, layers=layers(i), family=fam, k=int(i["k"]), nll=r["nll"],
                         active_units=units, data=f"{i.get('data.source')} {n_train:,} train",
                         passes=int(passes) if passes else "not recorded",
                         batch_size=int(batch) if batch else "not recorded",
                         updates=(updates(int(passes), n_train, int(batch))
                                  if passes and batch else "not recorded"),
                         schedule=f"{schedule}, lr {i.get('train.learning_rate')}",
                         device=i.get("device") or "not recorded"))
    return rows


def literature_section(results: dict, infos: dict, context: dict) -> list[str]:
    """Every measured row beside Burda et al.'s Table 1, with both budgets on the line."""
    rows = literature_rows(results, infos, context["n_train"])
    table = literature.table(rows)
    if not table:
        return []
    return ["", "## Beside the literature", "",
            f"NLL here is -L_{context['k']} on {context['n_test']:,} test digits; Burda et al.'s "
            "is -L_5000 on all 10,000 MNIST test digits. The gap is only comparable where the "
            "budgets are: read it with the budget on the same line "
            "(`python scripts/benchmark.py full_mnist` runs the benchmark's data and "
            "schedule, docs/full_mnist.md).", ""] + table


def results_rows(results: dict, infos: dict) -> list[str]:
    """The Results table's rows, and what a reader must know to read them: Gaussian decoders'
    units, switched models, eq. (7)'s untrained encoder."""
    lines = []
    for n, r in results.items():
        i = infos[n]
        lines.append(
            f"| {n}{' (2 layers)' if layers(i) == 2 else ''} | {i['objective']} | {i['k']} | "
            + (f"m={i['m']}" if "m" in i else f"beta={i['beta']}" if "beta" in i else "-")
            + f" | {i.get('estimator', '-')} | {i.get('epochs_trained', '-')} | "
            f"{_f(r['nll'])} | {_f(r['elbo'])} | {_f(r.get('gap_elbo_nll'))} | "
            f"{_f(r.get('L_5'))} | {_f(r.get('L_50'))} | "
            f"{_f(r['own_bound'])} | {_f(r['rate'])} | {_f(r['distortion'])} | "
            f"{_units(r)} | {_f(r['eval_images_per_s'], 0)} |")
    grey = [n for n, r in results.items() if "bits_per_dim" in r]
    if grey:
        lines += ["", "Gaussian decoders (" + ", ".join(grey) + ") model grey values "
                  "dequantized, y = (pixel + u) / 256 with u ~ Uniform[0, 1) per pixel (one "
                  "fixed draw for the test set): their NLL is in nats of that density on "
                  "[0, 1)^784. Adding 784 log 256 makes it a bound on -log P of the 8-bit "
                  "pixel values, >= 0 for any model: " + "; ".join(
                      f"{n} {_f(results[n]['nll_discrete'])} nats = "
                      f"{_f(results[n]['bits_per_dim'], 3)} bits/dim" for n in grey)
                  + ". Not comparable with the Bernoulli models' NLL of binarized digits."]
    lines += switched_table(results, infos)
    untrained = _select(infos, uses_encoder=False)
    if untrained:
        lines += ["", f"{', '.join(untrained)}: eq. (7) trains the decoder only, so the "
                  "encoder these bounds sample from is the untrained one; its ELBO, rate, "
                  "active units and posterior width describe no learned posterior. Its NLL is "
                  "still a valid estimate (importance sampling with any proposal is)."]
    return lines


def claims_section(claims: list[Claim], context: dict) -> list[str]:
    """The verdicts (marked indicative below the default budget), and the prior-vs-posterior
    table of eq. (7) against eq. (11)."""
    lines = ["", "## Claims", ""]
    short = context.get("indicative")
    label = " (indicative)" if short else ""
    if short:
        lines += ["**Indicative run**: below the default budget (" + "; ".join(short) + "). "
                  "Its verdicts show that the pipeline runs, not what the article's claims "
                  "do; rerun with the committed params.yaml for those.", ""]
    for c in claims:
        lines += [f"### {c.number}. {c.title}: **{c.verdict}**{label}", "",
                  f"- Rule: {c.rule}.", f"- Measured: {c.evidence}.", ""]
    pvp = context.get("prior_vs_posterior")
    if pvp:
        name, table = pvp
        lines += [f"## log p(x) estimated by sampling the prior vs the posterior ({name})", "",
                  "| k | prior sampling, eq. (7) | posterior importance sampling, eq. (11) |",
                  "|---|---|---|"]
        lines += [f"| {kk} | {_f(p)} | {_f(q)} |" for kk, (p, q) in sorted(table.items())]
        lines.append("")
    return lines


def render(results: dict, infos: dict, claims: list[Claim], context: dict) -> str:
    """reports/report.md. `context`: data source and sizes, evaluate.k, commands."""
    k = context["k"]
    lines = [
        "# VAE vs IWAE: the article's claims, measured",
        "",
        "Generated by `dvc repro report` from `metrics/eval/<model>.json`; every number and "
        "verdict below is computed by `vaelab/report.py` from this run. Article: Su Jianlin, "
        "\"变分自编码器(三):这样做为什么能成?\" (2018), https://spaces.ac.cn/archives/5383.",
        "",
        f"Data: `{context['source']}`, {context['n_train']} training digits, "
        f"{context['n_test']} test digits (fixed binarization). NLL = -L_{k} "
        f"(importance sampling with k={k} posterior samples, Burda et al. 2015).",
        "",
        "## Results",
        "",
        f"| model | objective | k | m / beta | estimator | epochs | NLL | L_1 (ELBO) | gap "
        f"| L_5 | L_50 | own bound | rate (KL) | distortion | active units | L_{k} images/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += results_rows(results, infos)
    lines += literature_section(results, infos, context)
    lines += claims_section(claims, context)
    lines += snr_section(results, context["snr_k"], context.get("snr_estimators", ("standard",)),
                         context.get("snr_digits"), context.get("snr_repeats"))
    lines += ["", "## Figures", ""]
    for title, fname in context["figures"]:
        lines += [f"### {title}", "", f"![{title}](figures/{fname})", ""]
    lines += ["## Reproduce", "", "```", "dvc repro", "```",
              "", "Change `params.yaml` (or `dvc exp run -S ...`) and rerun; "
              "`dvc metrics diff` compares the numbers.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# the report stage: records in, verdicts, report.md, figures and MLflow tags out

@dataclass
class Judgement:
    results: dict  # per model, Measurements.results()
    infos: dict  # per model, its model.json
    claims: list[Claim]
    budget: list[str]  # budget_shortfalls: [] for a run at the default budget
    cfg: EvaluateConfig  # the settings every record was measured with
    n_test: int
    n_train: int

    @property
    def label(self) -> str:
        return " (indicative)" if self.budget else ""

    def verdicts(self) -> dict[str, str]:
        return {f"claim_{c.number}": c.verdict + self.label for c in self.claims}


def judge(records: dict, seed_std: float | None = None) -> Judgement:
    """The claims over measurement records that agree on data split and estimator
    (vaelab.measurements.check_together)."""
    first = next(iter(records.values()))
    cfg = EvaluateConfig(**first.evaluate)
    results = {n: r.results() for n, r in records.items()}
    infos = {n: r.model for n, r in records.items()}
    return Judgement(results, infos, all_claims(results, infos, cfg.snr_k, seed_std),
                     budget_shortfalls(infos, cfg, first.n_test, first.n_train), cfg,
                     first.n_test, first.n_train)

def write(j: Judgement, arrays: dict, folder: str | Path, curves: dict | None = None) -> None:
    """report.md, verdicts.json and figures/ into `folder` (a fresh one: io.atomic_dir).
    `arrays`: per model the arrays of evaluate@ and sample@ (vaelab.measurements); `curves`:
    per model its per-epoch curve (measurements.read_curve), for the convergence figure."""
    from . import io

    folder = Path(folder)
    ref = reference_model(j.results, j.infos)
    cfg = j.cfg
    context = {"k": cfg.k, "source": j.infos[ref].get("data.source"), "n_train": j.n_train,
               "n_test": j.n_test, "snr_k": cfg.snr_k, "snr_estimators": cfg.snr_estimators,
               "snr_digits": cfg.snr_digits, "snr_repeats": cfg.snr_repeats,
               "indicative": j.budget,
               "prior_vs_posterior": (ref, j.results[ref]["_prior_vs_posterior"]),
               "figures": _figures(folder / "figures", j.results, arrays, ref)
               + _convergence(folder / "figures", j, curves or {})}
    io.write_text(folder / "report.md", render(j.results, j.infos, j.claims, context))
    io.write_json(folder / "verdicts.json", j.verdicts())


def _figures(folder: Path, results: dict, arrays: dict, ref: str) -> list[tuple[str, str]]:
    """The report's PNGs; returns [(title, file name)]."""
    from . import figures

    figures.side_by_side(folder / "samples.png", {n: a["samples"] for n, a in arrays.items()},
                         "Samples from the prior, decoded (E[x|z])")
    figures.reconstructions(folder / "reconstructions.png", next(iter(arrays.values()))["digits"],
                            {n: a["reconstructions"] for n, a in arrays.items()})
    figures.histograms(folder / "posterior_std.png",
                       {n: a["posterior_std_active"] for n, a in arrays.items()},
                       "std of q(z|x) on active units", "Posterior width (prior std = 1)")
    figures.snr_vs_k(folder / "snr.png", {n: r["_snr"] for n, r in results.items()},
                     "Per-parameter gradient SNR of the IWAE-k gradient of one digit "
                     "(median over parameters)")
    pvp = results[ref]["_prior_vs_posterior"]
    figures.lines_vs_k(folder / "prior_vs_posterior.png",
                       {"prior sampling, eq. (7)": {k: v[0] for k, v in pvp.items()},
                        "posterior sampling, eq. (11)": {k: v[1] for k, v in pvp.items()}},
                       "estimate of E log p(x) (nats)", f"Estimating log p(x) for {ref}")
    return [("Samples from each model", "samples.png"),
            ("Reconstructions (posterior mean)", "reconstructions.png"),
            ("Posterior width on active units", "posterior_std.png"),
            ("Gradient signal-to-noise ratio vs k (median per parameter, log-log)", "snr.png"),
            (f"log p(x) by prior vs posterior sampling ({ref})", "prior_vs_posterior.png")]


def _convergence(folder: Path, j: Judgement, curves: dict) -> list[tuple[str, str]]:
    """Validation -L_k and test NLL against passes, beside the published row: how far each
    model is from the end of Burda et al.'s schedule."""
    from . import figures

    rows = {r["name"]: r for r in literature_rows(j.results, j.infos, j.n_train)}
    drawn = {}
    for n, c in curves.items():
        if n in j.results and len(c.get("epoch", ())) and "valid_Lk" in c:
            # epochs without validation (train.valid_every) read back as NaN: not points
            seen = ~np.isnan(c["valid_Lk"])
            drawn[n] = (c["epoch"][seen], c["valid_Lk"][seen])
    if not drawn:
        return []
    valid_k = int(next(iter(j.infos.values())).get("train.valid_k", 50))
    published = {n: literature.published(r["layers"], r["family"], r["k"]).nll
                 for n, r in rows.items() if n in drawn}
    figures.convergence(folder / "convergence.png", drawn,
                        {n: (rows[n]["passes"] if n in rows else int(drawn[n][0][-1]),
                             j.results[n]["nll"]) for n in drawn},
                        published, valid_k, end_passes=literature.BUDGET["passes"])
    return [("Convergence: validation -L_k and test NLL against passes, beside Burda et al.",
             "convergence.png")]


REPORTED = "vaelab.reported_evaluation"  # the run's tag: the measurement last reported


def log_to_runs(client, records: dict, j: Judgement, folder: str | Path) -> list[str]:
    """The verdicts and the report into the training run of each model measured afresh:
    a run already reported with its record's measurement (an unchanged model, e.g. of
    another experiment, restored from DVC's cache) is never written. Returns those logged."""
    from . import tracking

    logged = []
    for n, r in records.items():
        log = tracking.RunLogger.of_run(r.run, client)
        if log.tags().get(REPORTED) == r.evaluation_id:
            continue
        for k, v in j.verdicts().items():
            log.tag(f"report.{k}", v)
        log.tag("vaelab.budget", "indicative: " + "; ".join(j.budget) if j.budget
                else "default")
        log.artifacts(folder, "report")
        log.update_note()  # its description now says the verdicts
        log.tag(REPORTED, r.evaluation_id)  # last: a failure above retries next time
        logged.append(n)
    return logged
