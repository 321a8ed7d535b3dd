"""Parallel writers against one MLflow store: is any metric lost, does any run fail?

Starts N writer processes; each opens one run through the pipeline's own code path
(vaelab.tracking.model_run, RunLogger.metrics: the calls the train stage makes every epoch),
logs a batch of metrics per step with values that encode writer, step and key, for a
bounded time, and ends its run. Then every run's status and every metric's full history are
read back and compared, value by value, with what was written. Prints one figure and exits
non-zero on any lost metric or failed run. Usage (docs/team.md):

    python scripts/tracking_load.py --uri http://127.0.0.1:5000 --writers 8 --seconds 60
    python scripts/tracking_load.py --uri sqlite:////tmp/load.db --writers 8 --seconds 60
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

KEYS = ("valid_bound", "valid_elbo", "valid_Lk", "loss", "samples_per_s")
EXPERIMENT = "tracking-load"


def value(writer: int, step: int, key: int) -> float:
    """Exact in a float64 (and in PostgreSQL's double precision), so a mixed-up or
    overwritten point is caught, not just a missing one."""
    return writer * 1_000_000 + step + key / 8


def write(writer: int, seconds: float) -> dict:
    """One writer: a run, then a batch of len(KEYS) metrics per step until `seconds` pass
    (counted from the parent's go signal on stdin, so all writers overlap)."""
    from vaelab.tracking import model_run

    with model_run(EXPERIMENT, f"writer{writer}", {"writer": writer}, {}) as run:
        print("ready", flush=True)
        sys.stdin.readline()
        deadline, step = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            step += 1
            run.metrics({k: value(writer, step, i) for i, k in enumerate(KEYS)}, step=step)
    return {"writer": writer, "run_id": run.run_id, "steps": step}


def check(uri: str, written: list[dict]) -> dict:
    """Read every run back: its status, and each metric's history against what was written."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    lost = wrong = 0
    failed = []
    for w in written:
        run = client.get_run(w["run_id"])
        if run.info.status != "FINISHED":
            failed.append(f"writer{w['writer']}: {run.info.status}")
        for i, key in enumerate(KEYS):
            got = {m.step: m.value for m in client.get_metric_history(w["run_id"], key)}
            expected = {s: value(w["writer"], s, i) for s in range(1, w["steps"] + 1)}
            lost += len(set(expected) - set(got))
            wrong += sum(got[s] != v for s, v in expected.items() if s in got)
            wrong += len(set(got) - set(expected))
    return {"lost": lost, "wrong": wrong, "failed_runs": failed}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True, help="the MLflow tracking URI to load")
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ["MLFLOW_TRACKING_URI"] = args.uri
    # The stages give a server 10 s per request, no retry (vaelab.tracking.connect: fail
    # fast); eight writers starting at once on a loaded machine can need more, and a team
    # sets the same two variables on its workers (docs/team.md).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    if args.worker is not None:
        print(json.dumps(write(args.worker, args.seconds)), flush=True)
        return 0

    procs = [subprocess.Popen([sys.executable, __file__, "--uri", args.uri, "--seconds",
                               str(args.seconds), "--worker", str(i)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(args.writers)]
    for proc in procs:  # every writer has imported MLflow and opened its run
        if proc.stdout.readline().strip() != "ready":
            for other in procs:
                other.kill()
            print(f"tracking_load: a writer could not open its run on {args.uri}")
            return 1
    tic = time.monotonic()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    written, crashed = [], 0
    for proc in procs:
        out = proc.stdout.read()
        if proc.wait() != 0:
            crashed += 1
            continue
        written.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.monotonic() - tic
    result = {"uri": args.uri, "writers": args.writers, "seconds": args.seconds,
              "wall_s": round(wall, 1), "crashed_writers": crashed,
              "metrics_written": sum(w["steps"] for w in written) * len(KEYS),
              **check(args.uri, written)}
    result["failed_runs"] += ["writer crashed"] * crashed
    print(f"{args.writers} writers x {args.seconds:g} s on {args.uri}: "
          f"{result['metrics_written']} metrics written "
          f"({result['metrics_written'] / wall:.0f}/s over {wall:.1f} s), "
          f"{result['lost']} lost, {result['wrong']} wrong, "
          f"{len(result['failed_runs'])} failed runs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if not (result["lost"] or result["wrong"] or result["failed_runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
