"""The model card: a trained model's `models/<name>/model.json`, the contract between
training and whoever reads a model folder (evaluation, sampling, the report, scripts).
Read and written here only.

The file is flat JSON, as it has always been: the run's resolved config as
RunConfig.as_flat_dict gives it (name, objective, k, the objective's hyperparameters,
init_from, data.*, model.*, train.*), what training found (`TRAINING`), and since version 2
`schema_version`. Version 1 is every file written before the version was recorded: the same
keys, read as they are. This module imports no Keras, so a report can read cards cheaply.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import registry
from .config import ModelConfig, RunConfig, UserError

FILE = "model.json"
VERSION_KEY = "schema_version"
SCHEMA_VERSION = 2
# what training found, beside the config (None: not recorded, left out of the file)
TRAINING = ("epochs_trained", "stopped_early", "best_epoch", "restored_best",
            "init_from_valid_Lk", "train_seconds", "posterior_std_by_epoch", "device")


def _validated_at(history: list[dict], i: int) -> dict | None:
    """history[i], or the last entry before it that has validation values; None if none."""
    return next((h for h in reversed(history[:i + 1]) if "valid_posterior_std" in h), None)


class CardError(UserError, ValueError):
    """A model.json this code cannot read: written by a newer version, or not a card."""


@dataclass(frozen=True)
class ModelCard:
    config: dict[str, Any]  # the flat resolved config (RunConfig.as_flat_dict)
    epochs_trained: int | None = None
    stopped_early: bool | None = None
    best_epoch: int | None = None  # with train.patience or restore_best only
    restored_best: bool | None = None
    init_from_valid_Lk: float | None = None  # the source model's, for objective switching
    train_seconds: float | None = None
    posterior_std_by_epoch: list | None = None  # [[epoch, median std of q]], ~10 epochs
    # what it trained on (vaelab.backend.devices): the budget line beside published figures
    device: str | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_training(cls, run: RunConfig, result, init_from_valid_Lk=None,
                      device: str | None = None) -> "ModelCard":
        """The card of a finished training (a vaelab.train.TrainResult)."""
        history, every = result.history, max(1, len(result.history) // 10)
        best = result.best_epoch is not None
        return cls(
            config=run.as_flat_dict(), epochs_trained=result.epochs_trained,
            stopped_early=result.stopped_early, best_epoch=result.best_epoch,
            restored_best=result.restored_best if best else None,
            init_from_valid_Lk=init_from_valid_Lk, device=device,
            train_seconds=sum(h["seconds"] for h in history),
            # how the posterior narrowed, for the report: each epoch once; an epoch without
            # validation (train.valid_every) gives the last validated one before it
            posterior_std_by_epoch=[[e, v] for e, v in {
                h["epoch"]: h["valid_posterior_std"]
                for h in (_validated_at(history, i)
                          for i in [0, *range(every - 1, len(history), every)])
                if h is not None}.items()])

    @classmethod
    def from_info(cls, info: Mapping[str, Any], where: str = FILE) -> "ModelCard":
        version = info.get(VERSION_KEY, 1)
        if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
            raise CardError(f"{where}: schema_version {version!r} is not one this code reads "
                            f"(1..{SCHEMA_VERSION}); update vaelab or retrain the model")
        found = {k: info[k] for k in TRAINING if k in info}
        # the weights' digest (vaelab.provenance.WEIGHTS_DIGEST) is a stamp on the file, not
        # config: a card read back equals the card that was written
        config = {k: v for k, v in info.items()
                  if k not in TRAINING and k not in (VERSION_KEY, "weights_sha256")}
        return cls(config=config, schema_version=version, **found)

    def to_info(self) -> dict[str, Any]:
        """The flat file content (written with the current schema version)."""
        found = {k: getattr(self, k) for k in TRAINING if getattr(self, k) is not None}
        return {**self.config, **found, VERSION_KEY: SCHEMA_VERSION}

    # the config side: what a reader needs to rebuild and measure the model

    @property
    def name(self) -> str:
        return self.config["name"]

    @property
    def objective(self) -> str:
        return self.config["objective"]

    @property
    def k(self) -> int:
        return int(self.config["k"])

    @property
    def options(self) -> dict[str, Any]:
        """The objective's hyperparameters as trained (vaelab.registry)."""
        spec = registry.OBJECTIVES[self.objective]
        return {n: self.config[n] for n in spec.hparam_names if n in self.config}

    def model_config(self) -> ModelConfig:
        """The architecture (model.*); keys a one-layer card leaves out take their defaults."""
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        given = {k[len("model."):]: v for k, v in self.config.items() if k.startswith("model.")}
        return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in given.items() if k in fields})


def write_info(folder: str | Path, info: ModelCard | Mapping[str, Any]) -> None:
    """Write `folder`/model.json from a card (or, for a bare export, any flat mapping)."""
    content = info.to_info() if isinstance(info, ModelCard) else dict(info)
    (Path(folder) / FILE).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def read_info(folder: str | Path) -> dict[str, Any]:
    """`folder`/model.json as a flat dict, its schema version checked (CardError)."""
    path = Path(folder) / FILE
    info = json.loads(path.read_text())
    if not isinstance(info, dict):
        raise CardError(f"{path}: not a model card (a JSON object); retrain the model")
    ModelCard.from_info(info, str(path))  # refuses a version this code cannot read
    return info


def read(folder: str | Path) -> ModelCard:
    """The card of the model in `folder`."""
    return ModelCard.from_info(read_info(folder), str(Path(folder) / FILE))
