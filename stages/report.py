"""DVC stage `report`: the article's claims judged over every model's measurement record
(metrics/eval/<name>.json): reports/report.md, its figures and verdicts.json,
metrics/summary.json, and the verdicts in the MLflow runs of the models measured afresh.
Measures nothing, so it re-renders in seconds."""
from pathlib import Path

from vaelab import cli
from vaelab.config import load_params


def main():
    p = cli.parser(__doc__)
    p.add_argument("--evals", default="metrics/eval", help="folder of the records")
    p.add_argument("--arrays", default="measurements", help="folder of the figures' arrays")
    p.add_argument("--curves", default="metrics/curves", help="folder of the per-epoch curves")
    p.add_argument("--out", default="reports", help="folder for report.md and figures/")
    p.add_argument("--summary", default="metrics/summary.json",
                   help="the headline figures per model (what `dvc exp show` lists)")
    args = p.parse_args()
    params = load_params(args.params)
    from vaelab import io, measurements, report, tracking
    names = cli.model_names(params, None)
    records = measurements.read_many(args.evals, names)  # every file checked first
    arrays = {n: {**measurements.read_arrays(Path(args.arrays) / f"{n}.npz", f"evaluate@{n}"),
                  **measurements.read_arrays(Path(args.arrays) / f"{n}.samples.npz",
                                             f"sample@{n}")} for n in names}
    client, _ = tracking.connect(params.mlflow.experiment)  # before anything is written
    j = report.judge(records, params.evaluate.nll_seed_std)
    if j.budget:
        print(f"report: indicative run, below the default budget: {'; '.join(j.budget)}")
    with io.atomic_dir(args.out) as out:
        report.write(j, arrays, out, {n: measurements.read_curve(Path(args.curves) / f"{n}.csv")
                                      for n in names})
    io.write_json(args.summary, report.summary(j.results, j.infos))
    for c in j.claims:
        print(f"report: claim {c.number} ({c.title}): {c.verdict}{j.label}")
    logged = report.log_to_runs(client, records, j, args.out)
    print(f"report: {Path(args.out) / 'report.md'}; verdicts logged to the MLflow runs of "
          f"{', '.join(logged) or 'no model (none measured afresh)'}")


if __name__ == "__main__":
    cli.run(main, "report")
