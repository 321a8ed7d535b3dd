"""The report's claims over measurement records of several runs, as the `report` stage would
judge them if they were one run's models (e.g. claim 8, two layers against one, when the
two-layer models were trained in another clone or experiment).

    python scripts/evaluate_together.py metrics/eval/vae_mc.json metrics/eval/iwae.json \
        ../other/metrics/eval/iwae_2l.json --json /tmp/together.json

Each input is a record (`metrics/eval/<name>.json`, vaelab.measurements) or a model folder
(encoder.keras, decoder.keras, model.json), which is then measured here with params.yaml's
`evaluate:` section on data/prepared's test digits. Records must all come from one data split
and one estimator of the NLL (evaluate.k, n_test, seed, snr_k, prior_k). A folder is checked
against itself and the digits it is scored on (vaelab.provenance): its weights and model.json
must be as trained (a relabelled objective or k is refused), and its training digits,
re-derived from the data its model.json records, must not be among the test digits.
`--snr-light` measures a folder's gradient SNR on one digit with 10 draws (claims 5 and 7 then
rest on that; claim 8 does not read it). Writes nothing in the repo and logs nothing to
MLflow. Errors a user can cause (a missing or damaged input, another data split) are one line
and exit status 2.
"""
import argparse
import dataclasses
import json
from pathlib import Path

from vaelab import cli
from vaelab.config import UserError, load_params
from vaelab.quiet import use_backend


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="records (metrics/eval/<name>.json) or model folders")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--snr-light", action="store_true")
    p.add_argument("--json", help="write every model's numbers here")
    args = p.parse_args()
    params = load_params(args.params)
    from vaelab import measurements, report

    cfg = params.evaluate
    if args.snr_light:
        cfg = dataclasses.replace(cfg, snr_estimators=("standard",), snr_digits=1, snr_repeats=10)
    want = {f"data.{k}": v for k, v in dataclasses.asdict(params.data).items()}
    split = {k: want[k] for k in measurements.DATA_KEYS}
    records, folders, seen = {}, [], set()
    for path in map(Path, args.inputs):  # every input checked before anything is measured
        if path.is_dir():
            folders.append(path)
        else:
            rec = measurements.read(path)
            records[rec.name] = rec
        name = path.name if path.is_dir() else rec.name
        if name in seen:
            raise UserError(f"{path}: a second model named {name!r}; rename one")
        seen.add(name)
    if folders:
        use_backend(params.train.backend)
        from vaelab import data, evaluate, models, provenance

        test = data.load_prepared(args.data, "test")
        loaded = []
        for f in folders:  # against its own weights and the digits it is scored on
            m = models.VAE.from_folder(f)
            provenance.check_weights(f, m.info)
            provenance.check_disjoint(f, m.info, args.data, test["x"][:cfg.n_test])
            loaded.append(m)
        n_train = len(data.load_prepared(args.data, "train")["y"])
        for m in loaded:
            records[m.name], _ = evaluate.measure(m, test, n_train, cfg, run={})
    records = measurements.check_together(records, split)
    j = report.judge(records, cfg.nll_seed_std)
    for name, r in j.results.items():
        print(f"{name}: NLL {r['nll']:.2f}, ELBO {r['elbo']:.2f}, gap {r['gap_elbo_nll']:.2f}, "
              f"active units {report._units(r)}", flush=True)
    for c in j.claims:
        print(f"\nclaim {c.number}: {c.title}: {c.verdict}\n  rule: {c.rule}\n  measured: {c.evidence}")
    if args.json:
        Path(args.json).write_text(json.dumps({n: r.metrics for n, r in records.items()},
                                              indent=1, default=float))


if __name__ == "__main__":
    cli.run(main, "evaluate_together")
