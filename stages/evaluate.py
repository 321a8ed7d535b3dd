"""DVC stage `evaluate`: measure every trained model on the fixed test set, turn the
article's claims into verdicts, write metrics/evaluate.json and reports/report.md."""
import dataclasses
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from vaelab import cli
from vaelab.config import clipped_prior_k, load_params
from vaelab.cost import check_cost, evaluate_cost
from vaelab.quiet import use_backend



@contextmanager
def heartbeat(what: str, expected_s: float, every_s: float = 30.0):
    """A line every `every_s` seconds while a long computation runs (DVC users watch the
    terminal; one model's L_k can take minutes), with the expected time."""
    stop = threading.Event()
    tic = time.perf_counter()

    def beat():
        while not stop.wait(every_s):
            print(f"evaluate: {what}: still computing, {time.perf_counter() - tic:.0f}s so far "
                  f"(L_k and prior sampling alone: about {expected_s:.0f}s on 2 CPU cores)",
                  flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def main():
    p = cli.parser(__doc__)
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--models", default="models")
    p.add_argument("--metrics", default="metrics/evaluate.json", help="every figure, per model")
    p.add_argument("--summary", default="metrics/summary.json",
                   help="the headline figures per model (what `dvc exp show` lists)")
    p.add_argument("--report", default="reports", help="folder for report.md and figures/")
    args = p.parse_args()
    params = load_params(args.params)
    use_backend(params.train.backend)  # before anything imports Keras; any model loads on it
    from vaelab import data, evaluate, io, report, tracking
    cfg = params.evaluate
    names = cli.model_names(params, None)
    check_cost(params, warn_as="evaluate")
    client, _ = tracking.connect(params.mlflow.experiment)  # fail before any work
    # Every model's files and training run are checked before anything is computed or
    # written: a missing, damaged or failed (diverged, interrupted) model stops it here.
    logs = {n: tracking.RunLogger.of_model(Path(args.models) / n, client) for n in names}
    test = data.load_prepared(args.data, "test")
    n_train = len(data.load_prepared(args.data, "train")["y"])

    loaded = {n: evaluate.Loaded.from_folder(Path(args.models) / n) for n in names}
    n_test = min(cfg.n_test, len(test["y"]))
    if clipped_prior_k(cfg) != cfg.prior_k:
        print(f"evaluate: evaluate.prior_k {list(cfg.prior_k)} clipped to evaluate.k={cfg.k}: "
              f"{list(clipped_prior_k(cfg))}")
    budget = report.budget_shortfalls({n: m.info for n, m in loaded.items()}, cfg, n_test)
    if budget:
        print(f"evaluate: indicative run, below the default budget: {'; '.join(budget)}")
    results, infos = {}, {}
    for i, (name, m) in enumerate(loaded.items(), 1):
        print(f"evaluate: {name} ({i}/{len(loaded)}): L_{cfg.k} on "
              f"{min(cfg.n_test, len(test['y']))} test digits, gradient SNR, prior sampling...",
              flush=True)
        tic = time.perf_counter()
        with heartbeat(name, evaluate_cost(params)[1] / len(names)):
            x_test = evaluate.test_inputs(test, m.kind, cfg.seed)
            results[name] = evaluate.evaluate_model(m, x_test, cfg)
        infos[name] = m.info
        r = results[name]
        print(f"evaluate: {name}: NLL {r['nll']:.2f}, ELBO {r['elbo']:.2f}, "
              f"{r['active_units']} active units, L_{cfg.k} at {r['eval_images_per_s']:.0f} "
              f"images/s, {time.perf_counter() - tic:.0f}s", flush=True)
    claims = report.all_claims(results, infos, cfg.snr_k, cfg.nll_seed_std)

    ref = report.reference_model(results, infos)
    with io.atomic_dir(args.report) as out:
        figs = write_figures(out / "figures", loaded, results, test, params, ref)
        context = {"k": cfg.k, "source": params.data.source, "n_train": n_train,
                   "n_test": n_test, "snr_k": cfg.snr_k, "snr_estimators": cfg.snr_estimators,
                   "snr_digits": cfg.snr_digits, "snr_repeats": cfg.snr_repeats,
                   "indicative": budget,
                   "prior_vs_posterior": (ref, results[ref]["_prior_vs_posterior"]),
                   "figures": figs}
        io.write_text(out / "report.md", report.render(results, infos, claims, context))
    public = {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in results.items()}
    io.write_json(args.metrics, public)
    io.write_json(args.summary, report.summary(public, infos))
    label = " (indicative)" if budget else ""
    for c in claims:
        print(f"evaluate: claim {c.number} ({c.title}): {c.verdict}{label}")

    verdicts = {f"claim_{c.number}": c.verdict + label for c in claims}
    # The estimator and the test set are in the name: L_200 on 50 digits is not L_5000 on
    # 500, and a re-evaluation with other evaluate.* params adds to the same training run.
    prefix = f"test_L{cfg.k}_n{n_test}/"
    described = {**{f"evaluate.{k}": v for k, v in dataclasses.asdict(cfg).items()},
                 "evaluate.n_test_used": n_test, "evaluate.prior_k_used": clipped_prior_k(cfg)}
    for name in names:
        log = logs[name]
        # One point per evaluation of this model: step n is its n-th evaluation, so a
        # rerun (other evaluate params) adds a point instead of piling up at step 0.
        step = log.last_step(prefix + "nll") + 1
        log.metrics({prefix + k: v for k, v in public[name].items()}, step=step)
        log.params(described)
        for k, v in verdicts.items():
            log.tag(f"report.{k}", v)
        log.tag("vaelab.budget", "indicative: " + "; ".join(budget) if budget else "default")
        log.artifacts(args.report, "report")
    print(f"evaluate: report -> {Path(args.report) / 'report.md'}")


def write_figures(folder, loaded, results, test, params, ref):
    """The report's PNGs; returns [(title, file name)]."""
    from vaelab import evaluate, figures
    cfg = params.evaluate
    n = min(64, params.sample.n)
    figures.side_by_side(folder / "samples.png",
                         {name: evaluate.prior_samples_of(m, n, params.sample.seed)
                          for name, m in loaded.items()},
                         "Samples from the prior, decoded (E[x|z])")
    digits = test["xb"][:12].astype("float32")
    figures.reconstructions(folder / "reconstructions.png", digits,
                            {name: evaluate.reconstructions(
                                m, evaluate.test_inputs(test, m.kind, cfg.seed)[:12])
                             for name, m in loaded.items()})
    figures.histograms(folder / "posterior_std.png",
                       {name: r["_posterior_std_active"] for name, r in results.items()},
                       "std of q(z|x) on active units", "Posterior width (prior std = 1)")
    figures.snr_vs_k(folder / "snr.png", {name: r["_snr"] for name, r in results.items()},
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


if __name__ == "__main__":
    cli.run(main, "evaluate")
