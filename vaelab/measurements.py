"""The contract between `evaluate@<name>` and the report: one model's measurements.

`metrics/eval/<name>.json` (kept by git, so every commit and experiment holds its numbers)
is a `Measurements` record with a schema version; the arrays behind the report's figures
(posterior widths, reconstructions, prior samples) go to `measurements/<name>*.npz` (DVC's
cache). This module alone writes and reads both: the report, `scripts/evaluate_together.py`
and the tests read a record through `read`, which refuses a damaged or other-version file
in one line that says how to remake it.
"""
from __future__ import annotations

import dataclasses
import json
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import io
from .config import UserError, clipped_prior_k

SCHEMA_VERSION = 1
# what must agree between records judged together: the same estimator of the NLL on the
# same test digits (the SNR's k too, claim 5 compares them); the data split is checked apart
COMPARABLE = ("k", "n_test", "seed", "snr_k", "prior_k")
MODEL_KEYS = ("objective", "k", "train.epochs")  # of model.json, what the report reads
DATA_KEYS = ("data.source", "data.path", "data.seed", "data.valid_size", "data.test_size")


# evaluate's keys that judge rather than measure: read by the report from params.yaml
JUDGING = ("nll_seed_std",)


def settings(cfg) -> dict:
    """The evaluate settings a measurement depends on (EvaluateConfig less JUDGING)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in JUDGING}


class MeasurementsError(UserError):
    """A record that cannot be read as this version's; the message names it and the fix."""


@dataclass(frozen=True)
class Measurements:
    name: str
    model: dict  # the model's model.json as trained (objective, k, layers, data, epochs...)
    metrics: dict  # every scalar: nll, elbo, L_k, active units, SNR medians, ...
    snr: dict  # vaelab.snr.measure's nested result: {estimator: {group: {"k": {k: ...}}}}
    prior_vs_posterior: dict  # {k: (log p(x) by prior sampling, by posterior sampling)}
    nll_ref_by: str  # which estimator claim 6 compares the loss with ("" = none)
    evaluate: dict  # the evaluate settings it was measured with (EvaluateConfig)
    n_test: int  # test digits used
    n_train: int  # training digits of the split (the report's data line)
    run: dict  # the MLflow run of the model's training: run_id, experiment_id, tracking_uri
    seconds: dict = field(default_factory=dict)  # wall seconds per measurement
    # a fresh id per measurement: the report logs to a model's run only for a measurement
    # that run has not been reported with (an unchanged model of another experiment: never)
    evaluation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_results(cls, name: str, info: dict, result: dict, cfg, n_test: int,
                     n_train: int, run: dict) -> "Measurements":
        """From vaelab.evaluate.evaluate_model's dict (its arrays go to write_arrays)."""
        return cls(name=name, model=dict(info),
                   metrics={k: v for k, v in result.items() if not k.startswith("_")},
                   snr=result["_snr"], prior_vs_posterior=result["_prior_vs_posterior"],
                   nll_ref_by=result.get("_nll_ref_by", ""), evaluate=settings(cfg),
                   n_test=n_test, n_train=n_train, run=dict(run),
                   seconds=dict(result.get("_seconds", {})))

    def results(self) -> dict:
        """The report's per-model view: the metrics, with the nested figures under '_' keys."""
        return {**self.metrics, "_snr": self.snr, "_prior_vs_posterior": self.prior_vs_posterior,
                "_nll_ref_by": self.nll_ref_by}

    def data_split(self) -> dict:
        return {k: self.model.get(k) for k in DATA_KEYS}


def log_to_run(log, m: Measurements, cfg) -> int:
    """A fresh record into its model's training run (a tracking.RunLogger), measured with
    `cfg`: every figure under one key whatever the settings (`test/nll`, ...; with
    `test/k` and `test/n_test`, so each step says its estimator), the settings as params
    `evaluate.*`, and the run's description. Returns the step: the model's n-th evaluation."""
    k = cfg.k
    step = log.test_metrics({**m.metrics, "k": k, "n_test": m.n_test},
                            f"L_{k} on {m.n_test} test digits")
    log.params({**{f"evaluate.{key}": v for key, v in settings(cfg).items()},
                "evaluate.n_test_used": m.n_test, "evaluate.prior_k_used": clipped_prior_k(cfg)})
    log.update_note()
    return step


def path_for(folder: str | Path, name: str) -> Path:
    return Path(folder) / f"{name}.json"


def _remake(name: str) -> str:
    return f"rerun `dvc repro evaluate@{name}` (or `dvc repro -f evaluate@{name}`)"


def write(path: str | Path, m: Measurements) -> None:
    io.write_json(path, dataclasses.asdict(m))


def read(path: str | Path) -> Measurements:
    """A record back, validated: this schema version, every field, the right types."""
    path = Path(path)
    name = path.stem
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise MeasurementsError(f"{path}: missing; {_remake(name)}") from None
    except (OSError, ValueError) as e:
        raise MeasurementsError(f"{path}: damaged ({type(e).__name__}); {_remake(name)}") from None
    if not isinstance(raw, dict):
        raise MeasurementsError(f"{path}: not a measurements record; {_remake(name)}")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise MeasurementsError(f"{path}: schema_version {version!r}, this version reads "
                                f"{SCHEMA_VERSION}; {_remake(name)}")
    fields = {f.name: f for f in dataclasses.fields(Measurements)}
    missing = [f for f in fields if f not in raw]
    unknown = [k for k in raw if k not in fields]
    if missing or unknown:
        raise MeasurementsError(f"{path}: damaged ({'missing ' + ', '.join(missing) if missing else ''}"
                                f"{'; ' if missing and unknown else ''}"
                                f"{'unknown ' + ', '.join(unknown) if unknown else ''}); "
                                f"{_remake(name)}")
    kinds = {"name": str, "model": dict, "metrics": dict, "snr": dict,
             "prior_vs_posterior": dict, "nll_ref_by": str, "evaluate": dict, "n_test": int,
             "n_train": int, "run": dict, "seconds": dict, "evaluation_id": str}
    wrong = [k for k, t in kinds.items() if not isinstance(raw[k], t)]
    if wrong or not all(k in raw["model"] for k in MODEL_KEYS):
        raise MeasurementsError(f"{path}: damaged ({', '.join(wrong) or 'model'} not as "
                                f"written); {_remake(name)}")
    # JSON keys are strings: k back to int, the pairs back to tuples
    raw["prior_vs_posterior"] = {int(k): tuple(v) for k, v in raw["prior_vs_posterior"].items()}
    raw["snr"] = {e: {g: {**r, "k": {int(k): s for k, s in r["k"].items()}}
                      for g, r in groups.items()} for e, groups in raw["snr"].items()}
    raw["evaluate"] = {k: tuple(v) if isinstance(v, list) else v
                       for k, v in raw["evaluate"].items()}
    return Measurements(**raw)


def read_many(folder: str | Path, names) -> dict[str, Measurements]:
    """The records of `names` in `folder` (metrics/eval), each checked against the others:
    one data split and one estimator of the NLL, else one line naming the odd one."""
    return check_together({n: read(path_for(folder, n)) for n in names})


def check_together(records: dict[str, Measurements], data: dict | None = None
                   ) -> dict[str, Measurements]:
    """Refuse records measured on another data split (`data`: params.yaml's as flat
    `data.*` keys; default: the first record's) or with other evaluate settings."""
    if not records:
        return records
    first = next(iter(records.values()))
    want = ({k: data.get(k) for k in DATA_KEYS} if data is not None else first.data_split())
    how = {k: first.evaluate.get(k) for k in COMPARABLE}
    for n, r in records.items():
        if r.name != n:
            raise MeasurementsError(f"{n}: its record names model {r.name!r}; "
                                    f"{_remake(n)}")
        if r.data_split() != want:
            raise MeasurementsError(
                f"{n}: measured on a model trained on {r.data_split()}, the others' data is "
                f"{want}; judge models of one data split together")
        got = {k: r.evaluate.get(k) for k in COMPARABLE}
        if got != how:
            raise MeasurementsError(
                f"{n}: measured with evaluate {got}, {first.name} with {how}; {_remake(n)}")
    return records


# ---------------------------------------------------------------------------------------
# the arrays behind the report's figures

def write_arrays(path: str | Path, **arrays) -> None:
    with io.atomic_file(path) as f:
        np.savez_compressed(f, **arrays)


def read_arrays(path: str | Path, remake: str) -> dict[str, np.ndarray]:
    """The arrays of `path`; missing or damaged: one line with `remake`, the stage to rerun."""
    path = Path(path)
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise MeasurementsError(f"{path}: missing; rerun `dvc repro {remake}`") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise MeasurementsError(f"{path}: damaged ({type(e).__name__}); rerun "
                                f"`dvc repro -f {remake}`") from None


def read_curve(path: str | Path) -> dict[str, np.ndarray]:
    """A model's per-epoch curve (metrics/curves/<name>.csv, written by training) as
    {column: values}; {} where there is none (a model trained before curves were kept)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        table = np.genfromtxt(path, delimiter=",", names=True, ndmin=1)
    except ValueError as e:
        raise MeasurementsError(f"{path}: damaged ({e}); rerun `dvc repro -f "
                                f"train@{path.stem}`") from None
    return {name: np.asarray(table[name], dtype=float) for name in table.dtype.names}
