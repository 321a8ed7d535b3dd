"""End to end: `dvc repro` on a tiny config in a fresh copy of the repo, then what a user
sees: outputs, the MLflow store, no-op reruns, a one-branch rerun, tracking failures."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from repo_copy import env_for, make_repo

from vaelab import measurements
from vaelab.report import CLAIMS

NAMES = ("vae", "vae_mc", "iwae", "prior")


def per_model(*names) -> set[str]:
    """The stages of these models after training: measuring, sampling."""
    return {f"{stage}@{n}" for n in names for stage in ("evaluate", "sample")}

TINY = {
    "data": {"valid_size": 200, "test_size": 100},
    "train": {"epochs": 2, "checkpoint_every": 1},
    "models": {"vae": {"objective": "elbo_analytic", "k": 1},
               "vae_mc": {"objective": "elbo_mc", "k": 1},
               "iwae": {"objective": "iwae", "k": 3},
               "prior": {"objective": "prior_mc", "k": 3, "epochs": 1}},
    "evaluate": {"k": 20, "n_test": 40, "chunk": 10, "snr_k": [1, 5], "snr_repeats": 3,
                 "snr_digits": 2,
                 "elbo_draws": 10, "prior_k": [1, 10]},
    "sample": {"n": 4},
}


def sh(repo: Path, *cmd, check=True, **env) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env_for(**env),
                         timeout=1800)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def dvc(repo: Path, *args, **kw):
    return sh(repo, sys.executable, "-m", "dvc", *args, **kw)


def ran(out: subprocess.CompletedProcess) -> set[str]:
    return {line.split("'")[1] for line in out.stdout.splitlines()
            if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh clone-like copy: the committed and to-be-committed files, git init, tiny params."""
    return make_repo(tmp_path_factory.mktemp("clone") / "repo", TINY)


@pytest.fixture(scope="module")
def first_run(repo):
    return dvc(repo, "repro")


def test_repro_runs_every_stage(repo, first_run):
    expected = {"check", "prepare", "report", *(f"train@{n}" for n in NAMES), *per_model(*NAMES)}
    assert ran(first_run) == expected
    assert "Traceback" not in first_run.stderr


def test_outputs_exist_and_parse(repo, first_run):
    prepared = repo / "data" / "prepared"
    test = np.load(prepared / "test.npz")
    assert test["x"].dtype == np.uint8 and test["x"].shape == (100, 28, 28)
    assert test["xb"].shape == (100, 784) and set(np.unique(test["xb"])) <= {0, 1}
    assert len(np.load(prepared / "train.npz")["y"]) == 5000 - 300
    for n in NAMES:
        folder = repo / "models" / n
        for f in ("encoder.keras", "decoder.keras", "model.json", "mlflow.json"):
            assert (folder / f).is_file(), f"{folder / f} missing"
        info = json.loads((folder / "model.json").read_text())
        assert info["objective"] == TINY["models"][n]["objective"]
        tracked = json.loads((folder / "mlflow.json").read_text())
        assert set(tracked) == {"run_id", "experiment_id", "tracking_uri"}
        assert tracked["tracking_uri"] == f"sqlite:///{repo / 'mlflow.db'}"
        train_metrics = json.loads((repo / "metrics" / "train" / f"{n}.json").read_text())
        assert np.isfinite(train_metrics["valid_bound"]) and train_metrics["samples_per_s"] > 0
        curve = (repo / "metrics" / "curves" / f"{n}.csv").read_text().splitlines()
        assert curve[0].startswith("epoch,") and len(curve) == 1 + (1 if n == "prior" else 2)
        # the curves every model shares: ELBO <= L_k on the same samples
        rows = [dict(zip(curve[0].split(","), map(float, line.split(",")))) for line in curve[1:]]
        assert all(r["valid_elbo"] <= r["valid_Lk"] + 1e-3 for r in rows)
        assert (repo / "samples" / f"{n}.png").read_bytes()[:4] == b"\x89PNG"
    ev = {n: measurements.read(repo / "metrics" / "eval" / f"{n}.json").metrics for n in NAMES}
    for n in NAMES:
        assert (repo / "measurements" / f"{n}.npz").is_file()
        assert (repo / "measurements" / f"{n}.samples.npz").is_file()
    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    assert set(summary) == set(NAMES)
    for n, s in summary.items():
        assert set(s) == {"nll", "elbo", "active_units", "train_min"}
        assert s["nll"] == pytest.approx(ev[n]["nll"], abs=1e-3) and s["train_min"] > 0
    for r in ev.values():
        assert r["nll"] > 0 and r["elbo"] <= -r["nll"] + 1e-3  # ELBO <= L_k
        assert 0 <= r["active_units"] <= 50
    report = (repo / "reports" / "report.md").read_text()
    for i in CLAIMS:
        assert f"### {i}." in report
    assert report.count("**HOLDS** (indicative)") + report.count("**DOES NOT HOLD** (indicative)") \
        + report.count("**NOT MEASURED** (indicative)") == len(CLAIMS)
    assert "### 8. Two stochastic layers give a better model, and IWAE still beats the VAE " \
        "there: **NOT MEASURED** (indicative)" in report  # no two-layer model in the tiny run
    assert "**Indicative run**" in report
    assert ("vae 94, vae_mc 94, iwae 94, prior 47 of 8,000 parameter updates (4,700 training "
            "digits)") in report  # 2 and 1 epochs of 4,700 digits in batches of 100
    assert "### 6. The loss L upper-bounds -E[log p(x)]: **HOLDS**" in report
    for fig in ("samples", "reconstructions", "posterior_std", "snr", "prior_vs_posterior"):
        assert (repo / "reports" / "figures" / f"{fig}.png").is_file()
    assert not list((repo / ".checkpoints").glob("*.npz")), "finished runs keep no checkpoint"
    assert not list(repo.rglob("*.tmp")), "no temporary file is left behind"


def test_mlflow_store_has_one_complete_run_per_model(repo, first_run):
    db = sqlite3.connect(repo / "mlflow.db")
    runs = dict(db.execute("select name, run_uuid from runs where status = 'FINISHED'"))
    assert set(runs) == set(NAMES)
    assert db.execute("select count(*) from runs").fetchone()[0] == len(NAMES)
    for name, run_id in runs.items():
        params = dict(db.execute("select key, value from params where run_uuid = ?", (run_id,)))
        assert params["objective"] == TINY["models"][name]["objective"]
        assert params["k"] == str(TINY["models"][name]["k"])
        assert "model.hidden" in params and "data.source" in params and "train.seed" in params
        steps = {s for (s,) in db.execute(
            "select step from metrics where run_uuid = ? and key = 'valid_bound'", (run_id,))}
        assert steps == ({1} if name == "prior" else {1, 2}), "one point per epoch, step=epoch"
        keys = {k for (k,) in db.execute("select key from latest_metrics where run_uuid = ?",
                                         (run_id,))}
        # one key per figure; the estimator and the test set in a tag: L_20 on 40 digits
        assert {"test/nll", "test/elbo", "test/active_units", "valid_elbo", "valid_Lk"} <= keys
        assert params["evaluate.k"] == "20" and params["evaluate.n_test_used"] == "40"
        assert params["sample.n"] == "4" and params["train.valid_k"] == "50"
        tags = dict(db.execute("select key, value from tags where run_uuid = ?", (run_id,)))
        assert tags["dvc.stage"] == f"train@{name}" and tags["objective"]
        assert tags.get("git_commit")
        assert tags["vaelab.budget"].startswith("indicative: ")
        assert tags["report.claim_6"].endswith(" (indicative)")
        assert tags["vaelab.test_estimator"] == "L_20 on 40 test digits"
        assert "Test NLL" in tags["mlflow.note.content"] and "Claims" in tags["mlflow.note.content"]
        inputs = {n for (n,) in db.execute(
            "select d.name from inputs i join datasets d on i.source_id = d.dataset_uuid "
            "where i.destination_id = ?", (run_id,))}
        assert inputs == {"mnist5k-train", "mnist5k-valid"}
        flavours = db.execute("select count(*) from logged_models where source_run_id = ?",
                              (run_id,)).fetchone()[0]
        assert flavours == 1, "the MLflow model (pyfunc), with its signature"
    kind = dict(db.execute("select key, value from experiment_tags"))
    assert kind["mlflow.experimentKind"] == "custom_model_development"
    artifacts = repo / "mlruns"
    for name, run_id in runs.items():
        found = {p.relative_to(artifacts).as_posix().split(f"{run_id}/artifacts/")[-1]
                 for p in artifacts.rglob("*") if f"{run_id}/artifacts/" in p.as_posix()}
        # common names, so MLflow's compare view lines the runs' files up
        assert {"model/encoder.keras", "model/decoder.keras", "model/model.json",
                "report/report.md", "samples.png", "curve.csv"} <= found, found


def test_second_repro_runs_only_the_check(repo, first_run):
    tic = time.perf_counter()
    out = dvc(repo, "repro")
    seconds = time.perf_counter() - tic
    assert ran(out) == {"check"}  # always run: it validates params.yaml (stages/check.py)
    assert seconds < 15, f"a no-op repro took {seconds:.1f}s"


def test_changing_one_k_reruns_only_its_branch(repo, first_run):
    """A dry run: what would rerun, without changing the shared repo for other tests."""
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["models"]["iwae"]["k"] = 2
    try:
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = dvc(repo, "repro", "--dry")
    finally:
        (repo / "params.yaml").write_text(original)
    # --dry runs nothing, so it cannot know that train@iwae's outputs will change: the
    # stages that read them (evaluate@iwae, sample@iwae) are not listed; the report is, for
    # its `models` param. That a real run re-runs iwae's branch only is
    # test_an_experiment_measures_and_logs_only_its_own_model's.
    assert ran(out) == {"check", "train@iwae", "report"}, out.stdout
    assert ran(dvc(repo, "repro", "--dry")) == {"check"}, "params restored: nothing to do"


def test_unreachable_tracking_server_fails_fast_and_writes_nothing(repo, first_run):
    out_dir = repo / "models" / "unreachable"
    out = sh(repo, sys.executable, "-m", "stages.train", "--name", "vae", "--out", str(out_dir),
             "--metrics", "m.json", "--curve", "c.csv", check=False,
             MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    assert out.returncode == 2
    assert "http://127.0.0.1:9" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not out_dir.exists() and not (repo / "m.json").exists()


def test_tracking_uri_override(repo, first_run, tmp_path):
    other = tmp_path / "other.db"
    def default_runs():
        with sqlite3.connect(repo / "mlflow.db") as db:
            return db.execute("select run_uuid from runs").fetchall()

    before = default_runs()
    sh(repo, sys.executable, "-m", "stages.train", "--name", "prior",
       "--out", str(tmp_path / "prior"), "--metrics", str(tmp_path / "m.json"),
       "--curve", str(tmp_path / "c.csv"), MLFLOW_TRACKING_URI=f"sqlite:///{other}")
    db = sqlite3.connect(other)
    assert [r for (r,) in db.execute("select name from runs")] == ["prior"]
    assert default_runs() == before, "the override must not also log to the default store"
    tracked = json.loads((tmp_path / "prior" / "mlflow.json").read_text())
    assert tracked["tracking_uri"] == f"sqlite:///{other}"


def test_evaluate_checks_its_model_before_writing_anything(repo, first_run, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(repo / "models", models)
    (models / "prior" / "mlflow.json").unlink()  # found before any work
    with sqlite3.connect(repo / "mlflow.db") as db:
        logged = db.execute("select count(*) from metrics").fetchone()[0]
    out = sh(repo, sys.executable, "-m", "stages.evaluate", "--model", str(models / "prior"),
             "--out", str(tmp_path / "m.json"), "--arrays", str(tmp_path / "a.npz"),
             check=False)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("evaluate: error: ") and "prior/mlflow.json is missing" in line
    assert "NLL" not in out.stdout, "nothing is computed"
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "a.npz").exists()
    with sqlite3.connect(repo / "mlflow.db") as db:
        assert db.execute("select count(*) from metrics").fetchone()[0] == logged


def test_sample_refuses_a_damaged_encoder_before_writing(repo, first_run, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(repo / "models", models)
    enc = models / "iwae" / "encoder.keras"
    enc.write_bytes(enc.read_bytes()[:100])
    out = sh(repo, sys.executable, "-m", "stages.sample", "--model", str(models / "iwae"),
             "--out", str(tmp_path / "s" / "iwae.png"), "--arrays", str(tmp_path / "s.npz"),
             check=False)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert f"{enc}: damaged" in line and "not found" not in line.lower()
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.npz").exists()


def test_report_refuses_a_damaged_record_in_one_line(repo, first_run, tmp_path):
    evals = tmp_path / "eval"
    shutil.copytree(repo / "metrics" / "eval", evals)
    (evals / "vae_mc.json").write_text('{"schema_version": 1, "name": "vae_mc"')
    out = sh(repo, sys.executable, "-m", "stages.report", "--evals", str(evals),
             "--out", str(tmp_path / "rep"), "--summary", str(tmp_path / "s.json"), check=False)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("report: error: ") and "vae_mc.json: damaged" in line
    assert "dvc repro evaluate@vae_mc" in line
    assert not (tmp_path / "rep").exists() and not (tmp_path / "s.json").exists()


def test_each_evaluation_logs_its_own_step(repo, first_run, tmp_path):
    """test/* metrics: step n is the model's n-th evaluation, one value per step."""
    def steps():
        with sqlite3.connect(repo / "mlflow.db") as db:
            return sorted(s for (s,) in db.execute(
                "select m.step from metrics m join runs r on m.run_uuid = r.run_uuid "
                "where r.name = 'vae' and r.status = 'FINISHED' "
                "and m.key = 'test/nll'"))

    before = steps()
    assert before == list(range(1, len(before) + 1)) and before, before
    sh(repo, sys.executable, "-m", "stages.evaluate", "--model", "models/vae",
       "--out", str(tmp_path / "m.json"), "--arrays", str(tmp_path / "a.npz"))
    assert steps() == before + [before[-1] + 1]


def test_experiments_compare_in_dvc(repo, first_run):
    """The loop a user runs: a committed baseline, one `dvc exp run -S ...`, then both sides
    read back from `dvc exp show` and `dvc metrics diff`. The experiment is a small run whose
    derived settings follow (prior_k [1, 10] clipped to evaluate.k=5) and only reevaluates."""
    dvc(repo, "repro")  # whatever earlier tests left out of date: the committed baseline
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")
    tracked = sh(repo, "git", "ls-files", "metrics").stdout.split()
    assert "metrics/summary.json" in tracked and "metrics/curves/vae.csv" in tracked
    out = dvc(repo, "exp", "run", "-n", "small", "-S", "evaluate.k=5", "-S", "evaluate.n_test=20")
    # check always runs, and is cheap; nothing is retrained
    assert ran(out) == {"check", "report", *(f"evaluate@{n}" for n in NAMES)}
    assert "clipped to evaluate.k=5: [1, 5]" in out.stdout

    rows = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    base = next(r for r in rows if r["rev"] != "workspace")
    [exp] = [e for r in base["experiments"] or [] for e in r["revs"] if e["name"] == "small"]

    def numbers(row):
        data = row["data"]
        return (data["metrics"]["metrics/summary.json"]["data"],
                data["params"]["params.yaml"]["data"]["evaluate"])

    (m_base, p_base), (m_exp, p_exp) = numbers(base), numbers(exp)
    assert (p_base["k"], p_base["n_test"], p_exp["k"], p_exp["n_test"]) == (20, 40, 5, 20)
    assert set(m_base) == set(m_exp) == set(NAMES)
    assert m_base["vae"]["nll"] != m_exp["vae"]["nll"]
    assert m_base["vae"]["train_min"] == m_exp["vae"]["train_min"]  # not retrained

    diff = json.loads(dvc(repo, "metrics", "diff", "--json", "HEAD", "small").stdout)
    d = diff["metrics/summary.json"]["vae.nll"]
    assert (d["old"], d["new"]) == (m_base["vae"]["nll"], m_exp["vae"]["nll"])
    params = json.loads(dvc(repo, "params", "diff", "--json", "HEAD", "small").stdout)
    assert params["params.yaml"]["evaluate.k"]["old"] == 20
    assert params["params.yaml"]["evaluate.k"]["new"] == 5
    plots = dvc(repo, "plots", "diff", "--json", "HEAD", "small")
    assert "valid_elbo" in plots.stdout and "errors" not in json.loads(plots.stdout)


TWO = {**TINY, "models": {"vae": {"objective": "elbo_analytic", "k": 1},
                          "iwae": {"objective": "iwae", "k": 3}},
       "train": {"epochs": 1, "checkpoint_every": 1}}


def timed_dvc(repo: Path, *args) -> tuple[str, dict[str, float]]:
    """dvc's output and the wall seconds of each stage it ran (until the next one began)."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=repo, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env_for())
    lines, starts = [], []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Running stage '"):
            starts.append((line.split("'")[1], time.perf_counter()))
    end = time.perf_counter()
    assert proc.wait(timeout=900) == 0, "".join(lines)
    ends = [t for _, t in starts[1:]] + [end]
    return "".join(lines), {name: e - t for (name, t), e in zip(starts, ends)}


def test_an_experiment_measures_and_logs_only_its_own_model(tmp_path):
    """Two `dvc exp run`s: the second, which retrains iwae, re-runs only iwae's branch and
    the report, and writes nothing into the vae model's MLflow run of the first."""
    repo = make_repo(tmp_path / "repo", TWO)
    out, _ = timed_dvc(repo, "exp", "run", "-n", "one")
    assert ran(subprocess.CompletedProcess([], 0, out)) == {
        "check", "prepare", "train@vae", "train@iwae", "report", *per_model("vae", "iwae")}

    def vae_run():
        with sqlite3.connect(repo / "mlflow.db") as db:
            [(run_id,)] = db.execute("select run_uuid from tags where key = 'vaelab.model' "
                                     "and value = 'vae'").fetchall()
            return (db.execute("select count(*) from metrics where run_uuid = ?",
                               (run_id,)).fetchone()[0],
                    dict(db.execute("select key, value from tags where run_uuid = ?",
                                    (run_id,))), run_id)

    def report_file(run_id):
        [path] = [p for p in (repo / "mlruns").rglob("report.md") if run_id in p.as_posix()]
        return path.read_bytes(), path.stat().st_mtime_ns

    points, tags, run_id = vae_run()
    assert "report.claim_1" in tags and tags["vaelab.reported_evaluation"]
    report_before = report_file(run_id)
    out, seconds = timed_dvc(repo, "exp", "run", "-n", "two", "-S", "models.iwae.k=2")
    print("\nsecond experiment, seconds per stage: "
          + ", ".join(f"{n} {s:.1f}" for n, s in seconds.items()))
    assert set(seconds) == {"check", "train@iwae", "report", *per_model("iwae")}
    assert vae_run() == (points, tags, run_id), "the vae run gained a point or a tag"
    assert report_file(run_id) == report_before, "the vae run's report was rewritten"
    # the retrained iwae's new run got its test metrics and the second experiment's report
    with sqlite3.connect(repo / "mlflow.db") as db:
        [(iwae2,)] = db.execute("select run_uuid from runs where name = 'iwae@two'").fetchall()
        keys = {k for (k,) in db.execute("select key from latest_metrics where run_uuid = ?",
                                         (iwae2,))}
        tags2 = dict(db.execute("select key, value from tags where run_uuid = ?", (iwae2,)))
    assert "test/nll" in keys and "report.claim_4" in tags2
    # a claim's wording changed: only the report re-renders, and it measures nothing
    report_py = repo / "vaelab" / "report.py"
    report_py.write_text(report_py.read_text().replace(
        '"IWAE gives a better generative model"', '"IWAE gives a better model of the data"'))
    out, seconds = timed_dvc(repo, "repro")
    print("after a wording edit, seconds per stage: "
          + ", ".join(f"{n} {s:.1f}" for n, s in seconds.items()))
    assert set(seconds) == {"check", "report"}
    assert "IWAE gives a better model of the data" in (repo / "reports" / "report.md").read_text()
