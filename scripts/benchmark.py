"""Run a benchmark configuration (benchmarks/<name>.yaml) as one named DVC experiment.

    python scripts/benchmark.py full_mnist                      # every row
    python scripts/benchmark.py full_mnist --only vae,iwae      # some rows
    python scripts/benchmark.py full_mnist --dry-run            # print the command only
    python scripts/benchmark.py full_mnist -- --queue           # extra `dvc exp run` options

The settings are checked as the `check` stage checks params.yaml before DVC starts. Rerunning
the same command after a kill resumes every model from its checkpoint.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from vaelab import benchmarks, cli

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("name", help="a file benchmarks/<name>.yaml")
    p.add_argument("--only", help="comma-separated models of the benchmark to run")
    p.add_argument("--dry-run", action="store_true", help="print the dvc command, run nothing")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])  # what follows `--` goes to `dvc exp run` untouched
    dvc_args = argv[cut + 1:]
    bench = benchmarks.load(ROOT / "benchmarks" / f"{args.name}.yaml")
    bench = benchmarks.resolved(benchmarks.select(
        bench, args.only.split(",") if args.only else None), ROOT)
    params = benchmarks.validate(yaml.safe_load((ROOT / args.params).read_text()), bench)
    cmd = ["dvc", "exp", "run", "-n", bench.name, *dvc_args]
    for o in benchmarks.overrides(bench):
        cmd += ["-S", o]
    print(f"benchmark {bench.name}: {len(params.models)} models "
          f"({', '.join(params.models)}) on {params.data.source} {params.data.path or ''}")
    print(shlex.join(cmd), flush=True)
    if not args.dry_run:
        sys.exit(subprocess.run(cmd, cwd=ROOT).returncode)


if __name__ == "__main__":
    cli.run(main, "benchmark")
