"""Train one entry of `models:` end to end, as the `train@<name>` stage does: refuse a network
that cannot fit in memory, start from another model's weights (`init_from`), resume a
checkpoint made by the same code and data, log one MLflow run, and write the model folder
(encoder.keras, decoder.keras, the model card, mlflow.json), the final figures and the
per-epoch curve. Import it after choosing the Keras backend (vaelab.quiet.use_backend).
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import keras

from . import backend, card, cli, data, io, models, tracking, train
from .config import DEFAULT_UPDATES, Params, RunConfig, UserError, updates


class OutOfMemoryError(UserError, MemoryError):
    """The network does not fit in memory; the message names model.hidden."""


@dataclass(frozen=True)
class Outputs:
    """Where train@<name> writes: the model folder, its final figures, its curve."""

    model: Path
    metrics: Path
    curve: Path

    @classmethod
    def default(cls, name: str, model=None, metrics=None, curve=None) -> "Outputs":
        return cls(Path(model or f"models/{name}"),
                   Path(metrics or f"metrics/train/{name}.json"),
                   Path(curve or f"metrics/curves/{name}.csv"))


def code_files(stage_file: str | Path) -> dict[str, Path]:
    """The code that decides the weights: the stage script and every vaelab module imported
    (what dvc.yaml lists as the stage's deps), by path relative to the repo."""
    here = Path(stage_file).resolve()
    files = {f"stages/{here.name}": here}
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == "vaelab" or name.startswith("vaelab.")) and path:
            files[f"vaelab/{Path(path).name}"] = Path(path)
    return files


def check_memory(run: RunConfig) -> None:
    """Refuse a network whose weights, gradients and two Adam slots (4 float32 copies) do
    not fit in the memory available now: TensorFlow would otherwise die with a 100-line
    ResourceExhaustedError, or the kernel would kill the process."""
    weights = models.n_weights(run.model)
    need, have = 4 * 4 * weights, cli.available_bytes()
    if have is not None and need > have:
        raise OutOfMemoryError(
            f"model.hidden {list(run.model.hidden)} (model '{run.name}'): {weights:,} weights "
            f"need about {need / 2**30:.1f} GiB to train, {have / 2**30:.1f} GiB available; "
            "use smaller layers")


def init_from(run: RunConfig, out: Outputs):
    """Objective switching: (encoder weights, decoder weights) of the source model, and its
    final validation L_k for the record (None when its metrics are gone); (None, None)
    without init_from."""
    if not run.init_from:
        return None, None
    encoder, decoder, _ = models.load(out.model.parent / run.init_from)
    source_metrics = out.metrics.parent / f"{run.init_from}.json"
    valid_lk = (json.loads(source_metrics.read_text()).get("valid_Lk")
                if source_metrics.exists() else None)
    return (encoder.get_weights(), decoder.get_weights()), valid_lk


def fingerprint(run: RunConfig, stage_file, data_dir: Path, out: Outputs) -> dict:
    """train.fingerprint of the code and data, plus the source weights of init_from: a
    checkpoint made from other source weights is discarded."""
    found = train.fingerprint(code_files(stage_file), data_dir)
    if run.init_from:
        for f in ("encoder.keras", "decoder.keras"):
            found["data"][f"{run.init_from}/{f}"] = io.file_sha256(
                out.model.parent / run.init_from / f)
    return found


def run_tags(run: RunConfig, n_train: int) -> dict:
    extra = {"objective": run.objective, "k": run.k, "vaelab.backend": backend.NAME,
             "vaelab.device": ", ".join(backend.devices())}
    if run.init_from:
        extra["vaelab.init_from"] = run.init_from
    # the report's rule (report.budget_shortfalls), which retags the run once it is measured
    steps = updates(run.train.epochs, n_train, run.train.batch_size)
    if steps < DEFAULT_UPDATES:
        extra["vaelab.budget"] = (f"indicative: {steps:,} of {DEFAULT_UPDATES:,} parameter "
                                  f"updates ({run.train.epochs} epochs of {n_train:,} digits)")
    return tracking.run_tags(f"train@{run.name}", extra)


def curve_csv(history: list[dict]) -> str:
    """The per-epoch curve: one row per epoch, every logged value to 6 significant digits.
    An epoch without validation (train.valid_every) has `nan` in its valid_* cells: DVC's
    plots skip it and join the validated points (an empty cell plots as 0, measured with
    the vega of .dvc/vega_offline.html), numpy reads NaN."""
    columns = list(dict.fromkeys(c for h in history for c in h))
    text = StringIO()
    rows = csv.writer(text, lineterminator="\n")
    rows.writerow(columns)
    rows.writerows([f"{h.get(c, float('nan')):.6g}" for c in columns] for h in history)
    return text.getvalue()


def summary(run: RunConfig, result: train.TrainResult) -> dict:
    """The final figures (metrics/train/<name>.json): the kept epoch's train_* and valid_*
    (the last, or the best with train.restore_best), epochs, seconds, samples/s."""
    out = {k: v for k, v in result.kept.items() if k.startswith(("train_", "valid_"))}
    out.update(epochs=result.epochs_trained, seconds=sum(h["seconds"] for h in result.history),
               samples_per_s=result.samples_per_s)
    if run.train.patience is not None or run.train.restore_best:  # default runs: as before
        out["stopped_early"] = result.stopped_early
        if result.best_epoch is not None:
            out.update(best_epoch=result.best_epoch, restored_best=result.restored_best)
    return out


def _train_guarded(run: RunConfig, *args, **kw) -> train.TrainResult:
    """train.train, with running out of memory as a one-line OutOfMemoryError."""
    try:
        return train.train(run, *args, **kw)
    except Exception as e:
        if not isinstance(e, MemoryError) and type(e).__name__ != "ResourceExhaustedError":
            raise
        raise OutOfMemoryError(
            f"model.hidden {list(run.model.hidden)} (model '{run.name}'): out of memory "
            f"while training ({type(e).__name__}); use smaller layers or "
            "train.batch_size") from None


def write_outputs(run: RunConfig, result: train.TrainResult, out: Outputs, log,
                  x_example, init_from_valid_lk=None) -> dict:
    """The model folder, final figures and curve, and their MLflow artifacts: the summary."""
    with io.atomic_dir(out.model) as tmp:
        models.save(tmp, result.encoder, result.decoder,
                    card.ModelCard.from_training(run, result, init_from_valid_lk,
                                                 device=", ".join(backend.devices())))
        io.write_json(tmp / "mlflow.json", log.describe())
    figures = summary(run, result)
    io.write_json(out.metrics, figures)
    io.write_text(out.curve, curve_csv(result.history))
    log.artifacts(out.model, "model")
    # the plain .keras files stay under model/; this is the same networks composed as
    # x -> E[x|z] at the posterior mean (several layers: at E_q[h1|x]), for MLflow's
    # loaders: digits as stored in, pixel probabilities out
    x_in = keras.Input((x_example[0].size,), name="x")
    log.keras_model(keras.Model(x_in, result.vae.reconstruct(x_in),
                                name=f"{run.name}_reconstruction"), x_example,
                    name=tracking.logged_model_name(run.name))
    log.artifact(out.curve, name="curve.csv")
    log.metrics({"final_" + k: v for k, v in figures.items()})
    return figures


def train_model(params: Params, name: str, data_dir: str | Path, out: Outputs,
                stage_file: str | Path) -> tuple[train.TrainResult, dict]:
    """Train models[name] on the prepared digits in data_dir and write `out`, logging one
    MLflow run (resumed with its checkpoint after a kill): (the result, its summary)."""
    run, data_dir = params.models[name], Path(data_dir)
    x_train = data.load_prepared(data_dir, "train")["x"]
    x_valid = data.load_prepared(data_dir, "valid")["x"]
    check_memory(run)
    init_weights, init_valid_lk = init_from(run, out)
    # A checkpoint belongs to the one process training it (a lock held to the end): a
    # parallel experiment of the same config gets a file of its own, never this one's live one.
    with train.own_checkpoint(tracking.repo_root() / ".checkpoints",
                              train.checkpoint_key(run)) as ckpt:
        return _train_owned(params, name, run, (x_train, x_valid), out, ckpt,
                            fingerprint(run, stage_file, data_dir, out), init_weights,
                            init_valid_lk, data_dir)


def _train_owned(params: Params, name: str, run: RunConfig, xs, out: Outputs, ckpt: Path,
                 found: dict, init_weights, init_valid_lk, data_dir: Path):
    x_train, x_valid = xs
    # read once: what is announced below is what training resumes from
    resumed = train.open_checkpoint(ckpt, found, say=lambda line: print(f"train@{name}: {line}"))
    resume_id = resumed.meta.get("mlflow_run_id") if resumed else None
    print(f"train@{name}: {run.objective} k={run.k}, {run.train.epochs} epochs on "
          f"{len(x_train)} digits" + (f", from {run.init_from}'s weights" if run.init_from else "")
          + (f", resuming after epoch {resumed.meta['epoch']}" if resumed else ""))
    with tracking.model_run(params.mlflow.experiment, name, run.as_flat_dict(),
                            run_tags(run, len(x_train)),
                            run_id=resume_id) as log:
        # Epochs past the checkpoint that the killed run had logged already are trained
        # again (to the same values) but not logged twice.
        # (train_bound: logged every epoch, valid_* only on validated ones)
        logged = log.last_step("train_bound") if log.run_id == resume_id else 0
        if log.run_id != resume_id:  # the prepared digits (params data.source, data.path)
            for part, x in (("train", x_train), ("valid", x_valid)):
                log.dataset(x, f"{params.data.source}-{part}",
                            str(data_dir.resolve() / f"{part}.npz"),
                            context="training" if part == "train" else "validation")

        def on_epoch(logs):
            if logs["epoch"] > logged:
                log.metrics({k: v for k, v in logs.items() if k != "epoch"}, step=logs["epoch"])

        result = _train_guarded(run, x_train, x_valid, on_epoch=on_epoch, checkpoint=ckpt,
                                checkpoint_extra={"mlflow_run_id": log.run_id,
                                                  "fingerprint": found},
                                init_weights=init_weights, resume=resumed)
        if log.run_id != resume_id:  # a fresh run: give it the epochs a checkpoint restored
            for logs in result.history[:result.resumed_from]:
                on_epoch(logs)
        figures = write_outputs(run, result, out, log, x_valid[:2], init_valid_lk)
    ckpt.unlink(missing_ok=True)  # the outputs are safe; the checkpoint has done its job
    return result, figures
