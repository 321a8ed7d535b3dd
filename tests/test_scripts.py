"""The helper scripts under scripts/, run as a user runs them (a subprocess, from another
folder): seed_spread.py on a `dvc exp show --json` document, evaluate_together.py on tiny
trained model folders, and their one-line errors."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from repo_copy import env_for

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args, cwd: Path, stdin: str | None = None, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                          cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout,
                          env=env_for(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"))


# ---------------------------------------------------------------------------------------
# seed_spread.py

def _entry(rev: str, summary: dict | None, name: str | None = None, data_rev: str | None = None):
    data = {"rev": data_rev or rev, "metrics": {}}
    if summary is not None:
        data["metrics"]["metrics/summary.json"] = {"data": summary}
    return {"rev": rev, "name": name, "data": data}


def exp_show(seeds: dict[str, float | None], running: dict[str, float] | None = None) -> list:
    """A `dvc exp show --json` document: the workspace, the baseline (HEAD) with `seeds`'
    first entry, experiments named by the rest, and a still running one."""
    names = list(seeds)
    summary = lambda nll: {"vae": {"nll": nll, "elbo": -nll - 5.0}}  # noqa: E731
    head = _entry("a" * 40, summary(seeds[names[0]]))
    head["experiments"] = [{"revs": [_entry(f"{i}" * 40, summary(seeds[n]), name=n)]}
                           for i, n in enumerate(names[1:], 1)]
    for n, v in (running or {}).items():  # its files are still the workspace's
        head["experiments"].append({"revs": [_entry("9" * 40, summary(v), n, "workspace")]})
    return [_entry("workspace", summary(0.0)), head,
            _entry("b" * 40, summary(1000.0))]  # an older commit: never read


def test_seed_spread_prints_mean_and_sample_std_of_the_matching_runs(tmp_path):
    doc = exp_show({"base": 90.0, "seed1": 92.0, "seed2": 97.0, "lr-test": 500.0},
                   running={"seed3": 400.0})
    out = script("seed_spread.py", cwd=tmp_path, stdin=json.dumps(doc))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "3 runs: aaaaaaa, seed1, seed2"  # the baseline by its short rev
    nll = [ln for ln in lines if ln.split()[:2] == ["vae", "nll"]]
    v = np.array([90.0, 92.0, 97.0])
    assert len(nll) == 1 and f"mean {v.mean():9.2f}" in nll[0] and \
        f"std {v.std(ddof=1):6.2f}" in nll[0] and "(n=3: 90.00, 92.00, 97.00)" in nll[0], nll


def test_seed_spread_with_no_experiment_says_so_in_one_line(tmp_path):
    doc = exp_show({"base": 90.0, "other": 91.0})
    out = script("seed_spread.py", "--pattern", r"seed\d+", cwd=tmp_path, stdin=json.dumps(doc))
    assert out.returncode != 0 and out.stdout == ""
    msg = out.stderr.strip()
    assert "\n" not in msg and "at least one experiment matching" in msg and "aaaaaaa" in msg


# ---------------------------------------------------------------------------------------
# evaluate_together.py

TINY = {
    "data": {"valid_size": 100, "test_size": 20},
    "model": {"latent": 3, "hidden": [16]},
    "train": {"epochs": 1, "batch_size": 50},
    "models": {"vae": {"objective": "elbo_analytic", "k": 1},
               "iwae": {"objective": "iwae", "k": 3}},
    "evaluate": {"k": 10, "n_test": 10, "chunk": 10, "batch_size": 10, "snr_k": [1, 3],
                 "snr_repeats": 3, "snr_digits": 1, "elbo_draws": 5, "prior_k": [1, 10]},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder as a user has it after a tiny run: params.yaml, data/prepared, and two
    trained model folders (encoder.keras, decoder.keras, model.json)."""
    from vaelab.quiet import silence_tf

    silence_tf()
    from vaelab import data, models, train
    from vaelab.config import parse_params

    root = tmp_path_factory.mktemp("together")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))
    params = parse_params(TINY)
    data.prepare(params.data, root / "data" / "prepared")
    x = data.load_prepared(root / "data" / "prepared", "train")["x"][:200]
    for name, run in params.models.items():
        r = train.train(run, x[:150], x[150:], progress=train.Progress(name, 1, io.StringIO()))
        models.save(root / "models" / name, r.encoder, r.decoder,
                    {"name": name, **run.as_flat_dict()})
    return root


def test_evaluate_together_on_a_missing_folder_is_one_line_and_exit_2(trained):
    out = script("evaluate_together.py", "models/vae", "models/nope", cwd=trained)
    assert out.returncode == 2, out.stderr[-2000:]
    msg = out.stderr.strip()
    assert "\n" not in msg and "models/nope" in msg and "Traceback" not in msg, msg
    assert "NLL" not in out.stdout  # nothing evaluated before every folder was checked


def test_evaluate_together_prints_every_model_and_the_claims(trained):
    out = script("evaluate_together.py", "models/vae", "models/iwae", "--snr-light",
                 cwd=trained)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for name in ("vae", "iwae"):
        assert re.search(rf"^{name}: NLL -?\d", out.stdout, re.M), out.stdout
    claims = re.findall(r"^claim (\d+): .+: (.+)$", out.stdout, re.M)
    assert claims and len({n for n, _ in claims}) == len(claims), out.stdout
    assert sorted(p.name for p in trained.iterdir()) == ["data", "models", "params.yaml"]
