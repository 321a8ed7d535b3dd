"""Evaluate trained model folders from several runs together, as the `evaluate` stage would
if they were one run's models, and print the report's claims (e.g. claim 8, two layers against
one, when the two-layer models were trained in another clone or experiment).

    python scripts/evaluate_together.py models/vae_mc models/iwae ../other/models/iwae_2l \
        --json /tmp/together.json

Uses params.yaml's `evaluate:` section and data/prepared's test digits. Each folder is
checked against itself and the digits it is scored on (vaelab.provenance): its weights and
model.json must be as trained (a relabelled objective or k is refused), and its training
digits, re-derived from the data its model.json records, must not be among the test digits.
`--snr-light` measures the gradient SNR on one digit with 10 draws (claims 5 and 7 then rest
on that; claim 8 does not read it). Writes nothing in the repo. Errors a user can cause (a
missing or damaged folder, another data split) are one line and exit status 2.
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
    p.add_argument("folders", nargs="+", help="model folders (encoder.keras, decoder.keras, model.json)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--snr-light", action="store_true")
    p.add_argument("--json", help="write every model's figures here")
    args = p.parse_args()
    params = load_params(args.params)
    use_backend(params.train.backend)
    from vaelab import data, evaluate, provenance, report

    cfg = params.evaluate
    if args.snr_light:
        cfg = dataclasses.replace(cfg, snr_estimators=("standard",), snr_digits=1, snr_repeats=10)
    test = data.load_prepared(args.data, "test")
    results, infos = {}, {}
    loaded = {}  # every folder checked before anything is computed, as the evaluate stage does
    for folder in map(Path, args.folders):
        m = evaluate.Loaded.from_folder(folder)
        provenance.check_weights(folder, m.info)
        provenance.check_disjoint(folder, m.info, args.data, test["x"][:cfg.n_test])
        if m.name in loaded:
            raise UserError(f"{folder}: a second model named {m.name!r}; rename one folder")
        loaded[m.name] = m
    for name, m in loaded.items():
        results[name] = evaluate.evaluate_model(m, evaluate.test_inputs(test, m.kind, cfg.seed), cfg)
        infos[name] = m.info
        r = results[name]
        print(f"{name}: NLL {r['nll']:.2f}, ELBO {r['elbo']:.2f}, gap {r['gap_elbo_nll']:.2f}, "
              f"active units {report._units(r)}", flush=True)
    for c in report.all_claims(results, infos, cfg.snr_k, cfg.nll_seed_std):
        print(f"\nclaim {c.number}: {c.title}: {c.verdict}\n  rule: {c.rule}\n  measured: {c.evidence}")
    if args.json:
        public = {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in results.items()}
        Path(args.json).write_text(json.dumps(public, indent=1, default=float))


if __name__ == "__main__":
    cli.run(main, "evaluate_together")
