"""The seed-to-seed spread of every model's headline numbers, from `dvc exp show --json`.

Reads the baseline commit and its experiments whose names match --pattern (default: the
`seed1`, `seed2`, ... of the sweep in the README) and prints, per model, the mean and the
sample std of each metric in metrics/summary.json. Usage, from the repo root:

    dvc exp show --json | python scripts/seed_spread.py
"""
from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np


def rows(shown: list, pattern: str) -> dict[str, dict]:
    """{name: summary.json data} for the baseline and the matching experiments."""
    out = {}
    for commit in shown:
        if commit.get("rev") == "workspace" or not commit.get("data"):
            continue
        for entry in [commit] + [r for e in commit.get("experiments") or [] for r in e["revs"]]:
            name = entry.get("name") or entry["rev"][:7]
            if entry is not commit and (entry.get("data") or {}).get("rev") == "workspace":
                continue  # still running (or queued): its files are the baseline's until done
            metrics = ((entry.get("data") or {}).get("metrics") or {})
            summary = metrics.get("metrics/summary.json", {}).get("data")
            if summary and (entry is commit or re.fullmatch(pattern, name)):
                out[name] = summary
        break  # the first commit is the baseline (HEAD)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pattern", default=r"seed\d+", help="experiment names to include (regex)")
    args = p.parse_args()
    found = rows(json.load(sys.stdin), args.pattern)
    if len(found) < 2:
        sys.exit(f"seed_spread: need the baseline and at least one experiment matching "
                 f"{args.pattern!r}; found {sorted(found) or 'none'}")
    print(f"{len(found)} runs: {', '.join(found)}")
    models = next(iter(found.values()))
    for model in models:
        for key in models[model]:
            vals = np.array([r[model][key] for r in found.values() if r.get(model, {}).get(key)
                             is not None], dtype=float)
            print(f"{model:8s} {key:13s} mean {vals.mean():9.2f}  std {vals.std(ddof=1):6.2f}  "
                  f"(n={len(vals)}: {', '.join(f'{v:.2f}' for v in vals)})")


if __name__ == "__main__":
    main()
