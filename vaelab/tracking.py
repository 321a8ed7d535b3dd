"""MLflow: where the store is, a fail-fast reachability check, and one run per model.

The default store is `sqlite:///<repo root>/mlflow.db`, anchored at DVC's root (DVC_ROOT,
which DVC sets for stage commands) rather than the working directory, so `dvc exp run` in a
temp dir or a queue lands in the same store as a plain `dvc repro`. Artifacts of that default
store go to `<repo root>/mlruns` for the same reason. `MLFLOW_TRACKING_URI` overrides it all.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
from contextlib import closing, contextmanager
from pathlib import Path

from .cli import stops_held
from .config import UserError

DB_NAME = "mlflow.db"
# The experiment tag MLflow's UI reads to open an experiment as training runs rather than
# GenAI traces (where its sidebar's workflow switch does not decide: in 3.17 it does, and
# `?workflowType=machine_learning` in the URL picks the training view; see README).
EXPERIMENT_KIND, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
# The description MLflow's UI shows (and lets a user edit) on an experiment and on a run.
NOTE = "mlflow.note.content"
# One metric key per test figure whatever the settings (test/nll, test/active_units, ...):
# the estimator and the test set of the latest evaluation are this tag, and params evaluate.*.
TEST_PREFIX, TEST_ESTIMATOR = "test/", "vaelab.test_estimator"
VERDICT_PREFIX = "report.claim_"  # the report's verdict tags (vaelab.report.log_to_runs)
EXPERIMENT_NOTE = (
    "vaelab: one run per trained model (DVC stage `train@<model>`; run name `<model>`, or "
    "`<model>@<DVC experiment>` for `dvc exp run`). Each run holds the model's resolved params, "
    "a point per epoch for every train_* curve and per validated epoch (train.valid_every) "
    "for every valid_* curve (`valid_elbo` and `valid_Lk` mean the same for every "
    "model; `valid_bound` is the model's own objective), the test metrics under stable keys "
    "(`test/nll` = -L_k, `test/elbo`, `test/active_units`, ...; step n = the model's n-th "
    "evaluation; the estimator and the test set in tag `vaelab.test_estimator`, params "
    "`evaluate.*` and metrics `test/k`, `test/n_test` of each step), the report's verdicts "
    "on the article's claims as tags `report.claim_<n>`, `report/` and a Logged Model named "
    "after the model. Runs below the default budget are tagged `vaelab.budget: indicative`.")
# Saved views (MLflow's "share view", an experiment tag each) the README links as
# `#/experiments/<id>/runs?viewStateShareKey=<key>`: the runs table sorted by test NLL with
# its column shown, and (with `&compareRunsMode=CHART`) the valid_elbo curve of every run.
VIEW_PREFIX = "mlflow.sharedViewState."
_NLL_COLUMN = f"metrics.`{TEST_PREFIX}nll`"
SHARED_VIEWS = {
    "vaelab": {"orderByKey": _NLL_COLUMN, "orderByAsc": True,
               "selectedColumns": [_NLL_COLUMN, f"metrics.`{TEST_PREFIX}active_units`",
                                   f"metrics.`{TEST_PREFIX}elbo`", "params.`objective`",
                                   "params.`k`", "tags.`vaelab.budget`"]},
    "vaelab-curves": {"chartsSearchFilter": "valid_elbo"}}
# What a logged model takes and gives (its MLmodel's metadata; README "Using a model").
MODEL_IO = {
    "input": "digits [N, 28, 28] or [N, 784]: uint8 grey values 0..255 or bits 0/1 as "
             "`prepare` stores them, or floats in [0, 1]",
    "output": "float32 [N, 784] pixel probabilities: E[x|z] at the posterior mean of z "
              "(Bernoulli decoder: sigmoid of its logits; Gaussian: its mean intensity)"}


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used; the message names the URI and what to do."""


def repo_root() -> Path:
    """DVC_ROOT when DVC runs us; else the nearest folder above the cwd holding .dvc/.

    `dvc exp run --temp` and queued experiments run in a copy under
    `<repo>/.dvc/tmp/exps/...` and set DVC_ROOT to that copy; the store and the
    checkpoints belong to the real repo, so such a root is mapped back to `<repo>`.
    """
    if os.environ.get("DVC_ROOT"):
        root = Path(os.environ["DVC_ROOT"]).resolve()
        parts = root.parts
        for i in range(len(parts) - 3):
            if parts[i:i + 3] == (".dvc", "tmp", "exps"):
                return Path(*parts[:i])
        return root
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return here


def default_uri() -> str:
    return f"sqlite:///{repo_root() / DB_NAME}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def _is_default(uri: str) -> bool:
    """Whether `uri` is this repo's own store. Compared by value: mlflow.set_tracking_uri
    (connect) sets MLFLOW_TRACKING_URI in this process, so the variable cannot tell."""
    return uri == default_uri()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


@contextmanager
def store_errors(action: str):
    """Any failure of the store while `action` (a server that died, a read-only or full
    database) becomes one TrackingError line naming the store. A stop (SIGTERM, Ctrl-C)
    waits for the write to end: raised inside it, it would leave sqlite locked."""
    try:
        with stops_held():
            yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException, sqlite/SQLAlchemy, requests
        raise TrackingError(
            f"MLflow store {tracking_uri()} failed while {action} ({_first_line(e)}); check "
            "that the server runs and the store is writable with free space, then rerun"
        ) from None


def _check_sqlite_file(uri: str, db: Path) -> None:
    """MLflow silently makes a fresh store of a zero-byte file, which loses the history
    without a word; a file that is not SQLite fails later with a long traceback."""
    if not db.exists():
        return
    if db.is_dir():
        raise TrackingError(f"MLflow store {uri}: {db} is a folder, not a database file; "
                            "move it away or set MLFLOW_TRACKING_URI")
    with open(db, "rb") as f:
        head = f.read(16)
    if not head:
        raise TrackingError(f"MLflow store {uri}: {db} is empty (0 bytes), so the run history "
                            "is lost; restore it from a backup, or delete it to start a new one")
    if head != b"SQLite format 3\x00":
        raise TrackingError(f"MLflow store {uri}: {db} is not an SQLite database; restore it "
                            "from a backup, or move it away to start a new one")


def _open_sqlite_store(uri: str, folder: Path) -> None:
    """Open the sqlite store, creating it on first use, under an exclusive lock on its
    folder: MLflow makes a fresh store's tables by schema migrations, which fail
    ("duplicate column name: step") when two processes run them at once, as the first
    stages of two queued experiments (`dvc queue start -j 2`) in a fresh clone do. MLflow
    keeps the store open per URI, so the process's later clients take no lock."""
    import fcntl

    from mlflow.tracking import MlflowClient

    fd = os.open(folder, os.O_RDONLY)  # a folder lock: no lock file to clean up or ignore
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception:  # noqa: BLE001 - connect meets the same failure and reports it
            pass
    finally:
        os.close(fd)  # releases the lock


def connect(experiment: str):
    """Check the store answers, make sure the experiment exists, return (client, exp id).

    Runs before any work so a stage with an unreachable store fails in a second, with
    nothing written and no half-logged run.
    """
    # An HTTP store otherwise retries with backoff for minutes before giving up.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import logging

    import mlflow
    from mlflow.tracking import MlflowClient

    # Creating a fresh sqlite store logs INFO lines about its tables on stderr; a stage
    # prints its own one-line summary instead.
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: folder {folder} is missing or not writable; "
                                "fix it, or set MLFLOW_TRACKING_URI to another store")
        _check_sqlite_file(uri, Path(uri[len("sqlite:///"):]))
        _open_sqlite_store(uri, folder)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            location = (repo_root() / "mlruns").as_uri() if _is_default(uri) else None
            try:
                exp_id = client.create_experiment(experiment, artifact_location=location,
                                                  tags=_experiment_tags({}))
            except Exception:  # noqa: BLE001 - another worker may have made it meanwhile
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
            for k, v in _experiment_tags(exp.tags).items():  # stores made before these tags
                client.set_experiment_tag(exp_id, k, v)
    except Exception as e:  # noqa: BLE001 - any failure here means "store unusable"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(
            f"MLflow tracking store {uri} cannot be reached ({first[:200]}); start the server, "
            "or unset MLFLOW_TRACKING_URI to use the local sqlite store") from None
    if exp is not None and _is_default(uri):
        elsewhere = _outside_repo(exp.artifact_location)
        if elsewhere is not None:
            raise TrackingError(
                f"MLflow store {uri}: experiment '{experiment}' keeps its artifacts in "
                f"{elsewhere}, outside this repo (it was copied or moved), so its runs would "
                f"write there; run `python -m vaelab.tracking --relocate` to keep them in "
                f"{repo_root() / 'mlruns'} (copy the old runs' files from {elsewhere} first "
                "if this repo lacks them), or set MLFLOW_TRACKING_URI")
    return client, exp_id


def _experiment_tags(have: dict) -> dict:
    """The experiment's tags it lacks or holds outdated: its kind, the shared runs view
    (ours: kept current), and a description unless one is there (a user's is kept)."""
    want = {EXPERIMENT_KIND: MODEL_DEVELOPMENT,
            **{VIEW_PREFIX + k: json.dumps(v) for k, v in SHARED_VIEWS.items()}}
    out = {k: v for k, v in want.items() if have.get(k) != v}
    if not have.get(NOTE):
        out[NOTE] = EXPERIMENT_NOTE
    return out


# What each run holds under these names (README): a Logged Model of the same name would be
# listed over them in the run's artifacts.
RUN_ARTIFACTS = ("model", "report", "curve.csv", "samples.png")


def logged_model_name(model: str) -> str:
    """The Logged Model of model `model` is named after it (`vae`), unless that is one of
    the run's own artifact names."""
    return model if model not in RUN_ARTIFACTS else f"{model}_keras"


def run_note(name: str, tags: dict, metrics: dict) -> str:
    """A run's description (markdown) from what it holds: the model, its objective and k,
    the latest test NLL with its estimator, the report's verdicts and the budget."""
    model = tags.get("vaelab.model", name)
    lines = [f"**{model}**" + (f": objective `{tags['objective']}`, k = {tags.get('k', '?')}"
                               if "objective" in tags else "")
             + (f" (DVC stage `{tags['dvc.stage']}`)" if "dvc.stage" in tags else "") + "."]
    nll = metrics.get(f"{TEST_PREFIX}nll")
    lines.append(f"Test NLL {nll:.2f} nats ({tags.get(TEST_ESTIMATOR, 'estimator not recorded')})."
                 if nll is not None else "Test NLL: not evaluated yet.")
    verdicts = sorted((int(k[len(VERDICT_PREFIX):]), v) for k, v in tags.items()
                      if k.startswith(VERDICT_PREFIX) and k[len(VERDICT_PREFIX):].isdigit())
    if verdicts:
        lines.append("Claims (`report/report.md`): "
                     + "; ".join(f"{n} {v}" for n, v in verdicts) + ".")
    if tags.get("vaelab.budget", "default") != "default":
        lines.append(f"Budget: {tags['vaelab.budget']}.")
    return "  \n".join(lines)


def _local_path(location: str) -> Path | None:
    """The folder a file: (or plain path) artifact location names; None for remote ones."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return None
    return Path(url2pathname(parsed.path) if parsed.scheme else location)


def _outside_repo(location: str) -> Path | None:
    """The folder of a local artifact location outside this repo, else None. The default
    store keeps absolute locations: those of a copied or moved repo name the original's;
    one under .dvc/ is a temporary experiment's copy, deleted with it."""
    path = _local_path(location)
    if path is None:
        return None
    root, path = repo_root(), path.resolve()
    inside = root in path.parents and root / ".dvc" not in (path, *path.parents)
    return None if inside else path


def _here(location: str) -> str:
    """`location` moved into this repo: what follows its last `mlruns` folder, under
    `<repo>/mlruns` (MLflow's own layout, `mlruns/<experiment id>`), in the same form
    (file: URI or plain path)."""
    parts = _local_path(location).parts
    tail = parts[len(parts) - parts[::-1].index("mlruns"):] if "mlruns" in parts else ()
    new = repo_root() / "mlruns" / Path(*tail) if tail else repo_root() / "mlruns"
    return new.as_uri() if location.startswith("file:") else str(new)


# Where the sqlite store keeps absolute artifact locations (MLflow 3's schema).
_LOCATION_COLUMNS = [("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"),
                     ("model_versions", "storage_location")]


def relocate() -> list[str]:
    """Point every local artifact location of this repo's store that lies outside the repo
    (a copied or moved repo's) into `<repo>/mlruns`: experiments, their runs and logged
    models, by rewriting the prefix in the sqlite database. Files are not moved. Returns
    a line per rewritten location."""
    import sqlite3

    db = repo_root() / DB_NAME
    _check_sqlite_file(default_uri(), db)
    if not db.is_file():
        raise TrackingError(f"{db}: no such store; nothing to relocate")
    said = []
    with closing(sqlite3.connect(db)) as con, con:
        tables = {n for (n,) in con.execute("select name from sqlite_master where type='table'")}
        for (old,) in con.execute("select distinct artifact_location from experiments").fetchall():
            if _outside_repo(old) is None:
                continue
            new = _here(old)
            for table, column in _LOCATION_COLUMNS:
                if table in tables:
                    con.execute(f"update {table} set {column} = ? || substr({column}, ?) "
                                f"where {column} = ? or substr({column}, 1, ?) = ?",
                                (new, len(old) + 1, old, len(old) + 1, old + "/"))
            said.append(f"{old} -> {new}")
    return said


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=repo_root(), timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_tags(stage: str, extra: dict) -> dict:
    tags = {"dvc.stage": stage, **{k: str(v) for k, v in extra.items()}}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def run_name(model: str) -> str:
    """`vae`, or `vae@<experiment>` when DVC runs an experiment: after a sweep the runs,
    and the legends of MLflow's charts, say which experiment each one belongs to."""
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{model}@{exp}" if exp else model


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _resumable(run, exp_id: str) -> bool:
    """Whether a resumed training may continue `run` rather than start its own: only the
    run's owner may, the same DVC experiment (or none, both times) in the same experiment,
    and never while a process that may be alive (this machine's, or any other's) still
    logs to it."""
    tags = run.data.tags
    if (run.info.experiment_id != exp_id
            or tags.get("dvc.exp_name") != os.environ.get("DVC_EXP_NAME")):
        return False
    if run.info.status != "RUNNING":
        return True
    pid = tags.get("vaelab.pid", "")
    return (tags.get("vaelab.host") == socket.gethostname() and pid.isdigit()
            and (int(pid) == os.getpid() or not _alive(int(pid))))


def mark_orphans_killed(client, exp_id: str, name: str | None = None,
                        keep: str | None = None) -> list[str]:
    """Runs of model `name` (of every model: None) left RUNNING by a training process of
    this machine that is gone (SIGKILL, a power cut: nothing could end them) are marked
    KILLED; returns their ids. Runs of live processes (parallel queued experiments), of
    other machines, and `keep` (the run about to be resumed) are left alone."""
    host = socket.gethostname()
    killed = []
    # by tag (runs named `vae@exp-...`), and by name for runs from before that tag
    queries = ([f"tags.`vaelab.model` = '{name}'", f"attributes.run_name = '{name}'"]
               if name is not None else ["tags.`vaelab.pid` != ''"])
    runs = {r.info.run_id: r for query in queries
            for r in client.search_runs([exp_id], filter_string=(
                f"{query} and attributes.status = 'RUNNING'"))}
    for run in runs.values():
        tags = run.data.tags
        if run.info.run_id == keep or tags.get("vaelab.host") != host:
            continue
        pid = tags.get("vaelab.pid", "")
        if pid.isdigit() and not _alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            killed.append(run.info.run_id)
    return killed


def mark_stale_runs(experiment: str) -> list[str]:
    """For the `check` stage, which runs before anything else: every run of `experiment`
    whose training process is gone is marked KILLED (`mark_orphans_killed`), so a SIGKILL
    leaves no run RUNNING past the next `dvc repro`. Costs nothing when the default store
    has no RUNNING run: MLflow is imported only then."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        import sqlite3

        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            return []
        try:
            with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
                running = "select 1 from runs where status = 'RUNNING' limit 1"
                if not con.execute(running).fetchall():
                    return []
        except sqlite3.Error:
            pass  # not a store yet, or damaged: connect() says which, in one line
    client, exp_id = connect(experiment)
    with store_errors("marking runs of dead processes KILLED"):
        return mark_orphans_killed(client, exp_id)


@contextmanager
def model_run(experiment: str, name: str, params: dict, tags: dict, run_id: str | None = None):
    """One MLflow run for one trained model, ended FINISHED, or FAILED on any exception
    (Ctrl-C included). With `run_id`, continues that run (a resumed training) instead of
    starting a new one. The run is tagged with this machine and process, so a later run of
    the same model can tell a killed run from a live one (`mark_orphans_killed`)."""
    import mlflow

    client, exp_id = connect(experiment)
    with store_errors("starting the run"):
        if run_id is not None:
            try:
                run = client.get_run(run_id)
                if not _resumable(run, exp_id):
                    run_id = None
            except Exception:  # noqa: BLE001 - the old run is gone: start afresh
                run_id = None
        resume = run_id
        for orphan in mark_orphans_killed(client, exp_id, name, keep=run_id):
            print(f"mlflow: run {orphan} of '{name}' was left RUNNING by a training process "
                  "that no longer exists: marked KILLED")
        tags = {**tags, "vaelab.model": name, "vaelab.host": socket.gethostname(),
                "vaelab.pid": str(os.getpid())}
        if run_id is None:
            run = client.create_run(exp_id, run_name=run_name(name), tags=tags)
            try:
                client.log_batch(run.info.run_id, params=[
                    mlflow.entities.Param(k, str(v)) for k, v in params.items()])
            except BaseException:
                _end(client, run.info.run_id, "FAILED")
                raise
        else:
            client.update_run(run_id, status="RUNNING")
            for k, v in tags.items():
                client.set_tag(run_id, k, v)
    run_id = run.info.run_id
    log = RunLogger(client, run_id, exp_id)
    monitor = _optional("system metrics", lambda: _system_metrics(run_id, resumed=run_id == resume))
    try:
        log.update_note()  # the first description; evaluate and report extend it
        yield log
    except BaseException:
        with stops_held():  # a second Ctrl-C or SIGTERM must not leave the run RUNNING
            _end(client, run_id, "FAILED")
            _optional("system metrics", lambda: monitor and monitor.finish())
        raise
    _optional("system metrics", lambda: monitor and monitor.finish())
    with store_errors("ending the run"):
        client.set_terminated(run_id, status="FINISHED")


def _end(client, run_id: str, status: str) -> None:
    """Best effort: when the store itself has failed (the error being raised), marking the
    run fails too; the original error is the one to report, and a later run of the model
    marks this one KILLED (`mark_orphans_killed`)."""
    try:
        with stops_held():
            client.set_terminated(run_id, status=status)
    except Exception:  # noqa: BLE001
        pass


def _optional(what: str, fn):
    """Run an optional extra (system metrics, the logged model, the dataset); its failure
    prints one line and must not lose the run or the stage's outputs."""
    try:
        with stops_held():  # they write to the store too
            return fn()
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f"mlflow: {what} not logged ({type(e).__name__}: {first})")
        return None


def _system_metrics(run_id: str, resumed: bool):
    """CPU, memory, disk and network use as `system/...` metrics every 10 s (psutil),
    a background thread of MLflow's that logs to the run by id."""
    import logging

    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(run_id, sampling_interval=10, resume_logging=resumed,
                                   tracking_uri=tracking_uri())
    monitor.start()
    return monitor


class RunLogger:
    """Logs to one run by id, without touching its status: evaluate and sample add to the
    training run this way, long after it finished."""

    def __init__(self, client, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id

    @classmethod
    def of_model(cls, model_dir: str | Path, client) -> "RunLogger":
        """The training run of the model in `model_dir`, via a client from `connect`."""
        path = Path(model_dir) / "mlflow.json"
        if not path.is_file():
            raise TrackingError(f"{path} is missing; retrain the model "
                                f"(dvc repro -f train@{Path(model_dir).name})")
        retrain = f"retrain it (dvc repro -f train@{Path(model_dir).name})"
        try:
            info = json.loads(path.read_text())
            info["run_id"], info["experiment_id"]
        except (ValueError, KeyError, TypeError):
            raise TrackingError(f"{path} is damaged; {retrain}") from None
        try:
            run = client.get_run(info["run_id"])
        except Exception:  # noqa: BLE001
            raise TrackingError(
                f"{model_dir}/mlflow.json names run {info['run_id']}, which the store "
                f"{tracking_uri()} does not hold; {retrain}") from None
        if run.info.status != "FINISHED":
            # A model of a failed (diverged, interrupted) training gets no verdict.
            raise TrackingError(
                f"{model_dir}: its training run {info['run_id']} is {run.info.status}, not "
                f"FINISHED, so it is not evaluated; {retrain}")
        return cls(client, info["run_id"], info["experiment_id"])

    @classmethod
    def of_run(cls, run: dict, client) -> "RunLogger":
        """The run a measurement record names (RunLogger.describe's dict)."""
        try:
            client.get_run(run["run_id"])
        except Exception:  # noqa: BLE001
            raise TrackingError(
                f"MLflow run {run.get('run_id')} (of a measured model) is not in the store "
                f"{tracking_uri()}; retrain the model or set MLFLOW_TRACKING_URI to "
                f"{run.get('tracking_uri')}") from None
        return cls(client, run["run_id"], run["experiment_id"])

    def tags(self) -> dict:
        with store_errors("reading the run"):
            return dict(self.client.get_run(self.run_id).data.tags)

    def metrics(self, values: dict, step: int | None = None,
                model_id: str | None = None) -> None:
        """Log metrics at `step`; with `model_id` (a Logged Model of this run), also as
        that model's metrics."""
        import time

        import mlflow

        ts = int(time.time() * 1000)
        batch = [mlflow.entities.Metric(k, float(v), ts, step or 0, model_id=model_id)
                 for k, v in values.items() if v is not None]
        with store_errors("logging metrics"):
            for i in range(0, len(batch), 500):  # the store's batch limit is 1000
                self.client.log_batch(self.run_id, metrics=batch[i:i + 500])

    def artifact(self, path: str | Path, folder: str | None = None,
                 name: str | None = None) -> None:
        """Log a file; `name` renames it, so every run holds it under the same name and
        MLflow's compare view lines the runs' files up (`curve.csv`, not `vae.csv`)."""
        with store_errors(f"uploading {path}"):
            if name is None or name == Path(path).name:
                self.client.log_artifact(self.run_id, str(path), folder)
                return
            import shutil
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                shutil.copyfile(path, Path(tmp) / name)
                self.client.log_artifact(self.run_id, str(Path(tmp) / name), folder)

    def params(self, values: dict) -> None:
        """Log params describing this run (evaluate.*, sample.*). MLflow params cannot
        change, and a re-evaluation with other settings logs to the same training run: a
        param already logged with another value is then kept, and the new value set as a
        tag of the same key (tags show the latest, as does tag vaelab.test_estimator)."""
        import mlflow

        with store_errors("logging params"):
            have = self.client.get_run(self.run_id).data.params
            new = {k: str(v) for k, v in values.items()}
            fresh = [mlflow.entities.Param(k, v) for k, v in new.items() if k not in have]
            if fresh:
                self.client.log_batch(self.run_id, params=fresh)
            for k, v in new.items():
                if k in have and have[k] != v:
                    self.client.set_tag(self.run_id, k, v)

    def artifacts(self, path: str | Path, folder: str | None = None) -> None:
        with store_errors(f"uploading {path}"):
            self.client.log_artifacts(self.run_id, str(path), folder)

    def keras_model(self, model, example, name: str = "keras_model") -> None:
        """`model` (Keras, x float32 [N, 784] in [0, 1] -> pixel probabilities) as an MLflow
        pyfunc model of this run (a LoggedModel) that takes digits as stored, uint8 0..255
        or 0/1 as well as floats, and `example` (a few stored digits) as its input example:
        vaelab/mlflow_digits.py, which MLflow runs on its own when it loads the model.
        Optional, like the dataset. Not named `model`: MLflow 3 lists a logged model's files
        under the run's artifact folder of the same name, which would shadow the plain
        .keras files in `model/`."""
        def log():
            import logging
            import tempfile
            from unittest import mock

            import keras
            import mlflow
            import numpy as np
            from mlflow.models import ModelSignature
            from mlflow.types import Schema, TensorSpec

            from . import backend

            mlflow.set_experiment(experiment_id=self.experiment_id)  # else "Default"
            keras.utils.disable_interactive_logging()
            # No input schema: MLflow would refuse every dtype and shape but one, and the
            # model's own code checks its input (mlflow_digits.as_model_input).
            signature = ModelSignature(outputs=Schema([TensorSpec(
                np.dtype(np.float32), (-1, int(np.prod(model.outputs[0].shape[1:]))))]))
            # a training stage prints its own lines, not MLflow's check of the example nor
            # its upload progress bar; both restored after, for the caller's own MLflow use
            pyfunc_log = logging.getLogger("mlflow.pyfunc")
            level = pyfunc_log.level
            pyfunc_log.setLevel(logging.WARNING)
            try:
                with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(
                        os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
                    path = Path(tmp) / "model.keras"
                    model.save(path)
                    # Model.log is mlflow.pyfunc.log_model with run_id (which knows only the
                    # active run). Explicit requirements: inferring them starts a subprocess.
                    mlflow.models.Model.log(
                        artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=self.run_id,
                        python_model=str(Path(__file__).with_name("mlflow_digits.py")),
                        artifacts={"keras_model": str(path)}, signature=signature,
                        input_example=example, metadata=MODEL_IO,
                        pip_requirements=[
                            f"mlflow=={mlflow.__version__}", f"keras=={keras.__version__}",
                            *(f"{pkg}=={v}" for pkg, v in backend.versions().items()
                              if pkg in ("tensorflow", "jax"))])
            finally:
                pyfunc_log.setLevel(level)

        _optional("MLflow model", log)

    def dataset(self, features, name: str, source: str, context: str = "training") -> None:
        """The data the run used, as an MLflow dataset input (name, digest, shape)."""
        def log():
            import mlflow
            from mlflow.entities import DatasetInput, InputTag

            import warnings

            with warnings.catch_warnings():  # "a path can be read in several ways": it is one
                warnings.simplefilter("ignore", UserWarning)
                ds = mlflow.data.from_numpy(features, source=source, name=name)
            d = ds.to_dict()  # public fields; the entity made from them, as MLflow does
            entity = mlflow.entities.Dataset(
                name=d["name"], digest=d["digest"], source_type=d["source_type"],
                source=d["source"], schema=d.get("schema"), profile=d.get("profile"))
            self.client.log_inputs(self.run_id, datasets=[DatasetInput(
                entity, [InputTag("mlflow.data.context", context)])])

        _optional(f"dataset {name}", log)

    def last_step(self, key: str) -> int:
        """The highest step logged for metric `key` (0 if none): what a killed run already
        recorded, so a resumed run does not log those epochs twice."""
        with store_errors("reading the run"):
            history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=0)

    def tag(self, key: str, value) -> None:
        with store_errors("tagging the run"):
            self.client.set_tag(self.run_id, key, str(value))

    def update_note(self) -> None:
        """Rewrite the run's description (`run_note`) from what the run holds now."""
        with store_errors("describing the run"):
            run = self.client.get_run(self.run_id)
            self.client.set_tag(self.run_id, NOTE, run_note(run.info.run_name, run.data.tags,
                                                            run.data.metrics))

    def logged_model_id(self) -> str | None:
        """The id of the run's latest Logged Model (`RunLogger.keras_model`); None if none
        (the optional flavour failed)."""
        with store_errors("reading the run"):
            outputs = self.client.get_run(self.run_id).outputs
        found = outputs.model_outputs if outputs is not None else []
        return found[-1].model_id if found else None

    def test_metrics(self, values: dict, estimator: str) -> int:
        """One evaluation's figures as `test/<key>` at step n, this model's n-th evaluation,
        also attached to its Logged Model; `estimator` (e.g. "L_5000 on 500 test digits")
        as tag vaelab.test_estimator. Returns the step."""
        step = self.last_step(f"{TEST_PREFIX}nll") + 1
        self.metrics({TEST_PREFIX + k: v for k, v in values.items()}, step=step,
                     model_id=self.logged_model_id())
        self.tag(TEST_ESTIMATOR, estimator)
        return step

    def describe(self) -> dict:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id,
                "tracking_uri": tracking_uri()}


if __name__ == "__main__":
    import argparse

    from . import cli

    p = argparse.ArgumentParser(description="This repo's MLflow store (mlflow.db).")
    p.add_argument("--relocate", action="store_true", required=True,
                   help="point artifact locations of a copied or moved repo at <repo>/mlruns")

    def main():
        p.parse_args()
        for line in relocate() or ["nothing outside this repo: no change"]:
            print(f"relocate: {line}")

    cli.run(main, "relocate")
