"""Where a trained model folder comes from, checked against its own files and against the
digits it is about to be scored on, not against params.yaml (which may describe another run).

- `check_weights`: model.json's `weights_sha256` (written by `models.save` at training time:
  the weights and the rest of model.json, hashed together) must match the folder: a folder
  relabelled by hand (objective, k) or whose weights were swapped is refused.
- `check_disjoint`: the model's training digits, re-derived from the data it records
  (source, path, seed, sizes: `data.split_source`), must not be among the digits it is
  scored on, beyond the exact duplicates the scored data set itself has between its train
  and test splits (MNIST has a few identical digits).

No TensorFlow: both read files and numpy arrays only. Used by scripts/evaluate_together.py.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from . import data, io
from .config import DataConfig, UserError

WEIGHT_FILES = ("encoder.keras", "decoder.keras")
WEIGHTS_DIGEST = "weights_sha256"  # model.json's key


def stamped(folder: str | Path, info: dict) -> dict:
    """model.json's contents with the digest of the weights in `folder` and of `info`
    itself: what was trained, bound to the weights (called by `models.save`)."""
    return {**info, WEIGHTS_DIGEST: io.digest([Path(folder) / n for n in WEIGHT_FILES], info)}


class ProvenanceError(UserError):
    """A model folder that is not what its model.json says, or scored on its own digits."""


def check_weights(folder: str | Path, info: dict, say=print) -> bool:
    """Refuse a folder whose weights or model.json changed since training; True when
    verified, False (with one line) when the folder predates the digest."""
    folder = Path(folder)
    recorded = info.get(WEIGHTS_DIGEST)
    if recorded is None:
        say(f"{folder}/model.json: warning: no {WEIGHTS_DIGEST} (trained before vaelab "
            "recorded it): its objective and k are taken on trust; retrain it to verify them")
        return False
    rest = {k: v for k, v in info.items() if k != WEIGHTS_DIGEST}
    if io.digest([folder / n for n in WEIGHT_FILES], rest) != recorded:
        raise ProvenanceError(
            f"{folder}: the weights or model.json changed since training ({WEIGHTS_DIGEST} "
            f"does not match; objective {info.get('objective')!r}, k {info.get('k')!r} "
            "cannot be trusted): restore the folder as trained, or retrain it")
    return True


def data_config(info: dict) -> DataConfig:
    """The data a model trained on, from its model.json (`data.*` keys)."""
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    return DataConfig(**{k: info[f"data.{k}"] for k in fields if f"data.{k}" in info})


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.asarray(x, np.uint8).reshape(len(x), -1)}


def check_disjoint(folder: str | Path, info: dict, prepared: str | Path,
                   test_x: np.ndarray) -> None:
    """Refuse a model whose training digits are among `test_x` (the digits it is scored on,
    from the prepared folder `prepared`) beyond the duplicates `prepared`'s own train and
    test splits share."""
    cfg = data_config(info)
    try:
        train = data.split_source(cfg, say=lambda line: None)["train"][0]
    except UserError as e:
        raise ProvenanceError(
            f"{folder}/model.json: its training data cannot be re-derived to check that it "
            f"is not scored on its own digits ({e}); make data.path available as it was "
            "at training time") from None
    scored = np.asarray(test_x, np.uint8).reshape(len(test_x), -1)
    seen = _rows(train)
    own = sum(row.tobytes() in seen for row in scored)
    natural = _rows(data.load_prepared(prepared, "train")["x"])
    baseline = sum(row.tobytes() in natural for row in scored)
    if own > baseline:
        raise ProvenanceError(
            f"{folder}: {own} of the {len(scored)} digits it would be scored on are among "
            f"its own training digits (it trained on {json.dumps(dataclasses.asdict(cfg))}); "
            f"score it on the split it trained with (--data of a folder prepared with those "
            "data params)")
