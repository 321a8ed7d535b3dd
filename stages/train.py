"""DVC stage `train@<name>`: train one entry of `models:` and log it as one MLflow run."""
import contextlib
import json
import sys
from pathlib import Path

from vaelab import cli
from vaelab.config import DEFAULT_BUDGET, UserError, load_params
from vaelab.quiet import use_backend


class OutOfMemoryError(UserError, MemoryError):
    """The network does not fit in memory; the message names model.hidden."""


def code_files() -> dict[str, Path]:
    """The code that decides the weights: this script and every vaelab module it imported
    (what dvc.yaml lists as the stage's deps), by path relative to the repo."""
    here = Path(__file__).resolve()
    files = {f"stages/{here.name}": here}
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == "vaelab" or name.startswith("vaelab.")) and path:
            files[f"vaelab/{Path(path).name}"] = Path(path)
    return files


def check_memory(run) -> None:
    """Refuse a network whose weights, gradients and two Adam slots (4 float32 copies) do
    not fit in the memory available now: TensorFlow would otherwise die with a 100-line
    ResourceExhaustedError, or the kernel would kill the process."""
    from vaelab import models
    m = run.model
    weights = models.n_weights(m)
    need = 4 * 4 * weights
    have = cli.available_bytes()
    if have is not None and need > have:
        raise OutOfMemoryError(
            f"model.hidden {list(m.hidden)} (model '{run.name}'): {weights:,} weights need "
            f"about {need / 2**30:.1f} GiB to train, {have / 2**30:.1f} GiB available; "
            "use smaller layers")


def main():
    # the lock that makes this process the one owner of its checkpoint is held until here
    with contextlib.ExitStack() as held:
        train_model(held)


def train_model(held: contextlib.ExitStack):
    p = cli.parser(__doc__)
    p.add_argument("--name", required=True, help="a key of `models:` in params.yaml")
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--out", help="model folder (default: models/<name>)")
    p.add_argument("--metrics", help="final figures (default: metrics/train/<name>.json)")
    p.add_argument("--curve", help="per-epoch CSV (default: metrics/curves/<name>.csv)")
    args = p.parse_args()
    params = load_params(args.params)
    [name] = cli.model_names(params, [args.name])
    run = params.models[name]
    use_backend(run.train.backend)  # before anything imports Keras
    import keras

    from vaelab import backend, data, io, models, tracking, train
    out = Path(args.out or f"models/{name}")
    metrics_path = Path(args.metrics or f"metrics/train/{name}.json")
    curve_path = Path(args.curve or f"metrics/curves/{name}.csv")

    x_train = data.load_prepared(args.data, "train")["x"]
    x_valid = data.load_prepared(args.data, "valid")["x"]

    check_memory(run)
    init_weights, init_info = None, {}
    if run.init_from:  # objective switching: start from another model's trained weights
        source = out.parent / run.init_from
        encoder, decoder, _ = models.load(source)
        init_weights = (encoder.get_weights(), decoder.get_weights())
        init_info = {"init_from": run.init_from}
        source_metrics = metrics_path.parent / f"{run.init_from}.json"
        if source_metrics.exists():  # its final validation L_k, for the record
            init_info["init_from_valid_Lk"] = json.loads(source_metrics.read_text()).get("valid_Lk")
    # A checkpoint belongs to the one process training it: a parallel experiment of the same
    # config gets a file of its own, never this one's live checkpoint.
    ckpt = held.enter_context(train.own_checkpoint(tracking.repo_root() / ".checkpoints",
                                                   train.checkpoint_key(run)))
    fingerprint = train.fingerprint(code_files(), Path(args.data))
    if run.init_from:  # a checkpoint made from other source weights is discarded
        for f in ("encoder.keras", "decoder.keras"):
            fingerprint["data"][f"{run.init_from}/{f}"] = io.file_sha256(out.parent / run.init_from / f)
    # read once: what is announced below is what training resumes from
    resumed = train.open_checkpoint(ckpt, fingerprint,
                                    say=lambda line: print(f"train@{name}: {line}"))
    resume_id = resumed.meta.get("mlflow_run_id") if resumed else None
    print(f"train@{name}: {run.objective} k={run.k}, {run.train.epochs} epochs on "
          f"{len(x_train)} digits" + (f", from {run.init_from}'s weights" if run.init_from else "")
          + (f", resuming after epoch {resumed.meta['epoch']}" if resumed else ""))

    extra = {"objective": run.objective, "k": run.k, "vaelab.backend": backend.NAME,
             "vaelab.device": ", ".join(backend.devices())}
    if run.init_from:
        extra["vaelab.init_from"] = run.init_from
    if run.train.epochs < DEFAULT_BUDGET["train.epochs"]:
        extra["vaelab.budget"] = (f"indicative: {run.train.epochs} of "
                                  f"{DEFAULT_BUDGET['train.epochs']} epochs")
    tags = tracking.run_tags(f"train@{name}", extra)
    with tracking.model_run(params.mlflow.experiment, name, run.as_flat_dict(), tags,
                            run_id=resume_id) as log:
        # Epochs past the checkpoint that the killed run had logged already are trained
        # again (to the same values) but not logged twice.
        logged = log.last_step("valid_bound") if log.run_id == resume_id else 0
        if log.run_id != resume_id:  # the prepared digits (params data.source, data.path)
            for part, x in (("train", x_train), ("valid", x_valid)):
                log.dataset(x, f"{params.data.source}-{part}",
                            str(Path(args.data).resolve() / f"{part}.npz"),
                            context="training" if part == "train" else "validation")

        def on_epoch(logs):
            if logs["epoch"] > logged:
                log.metrics({k: v for k, v in logs.items() if k != "epoch"}, step=logs["epoch"])

        try:
            result = train.train(run, x_train, x_valid, on_epoch=on_epoch, checkpoint=ckpt,
                                 checkpoint_extra={"mlflow_run_id": log.run_id,
                                                   "fingerprint": fingerprint},
                                 init_weights=init_weights, resume=resumed)
        except Exception as e:
            if not isinstance(e, MemoryError) and type(e).__name__ != "ResourceExhaustedError":
                raise
            raise OutOfMemoryError(
                f"model.hidden {list(run.model.hidden)} (model '{run.name}'): out of memory "
                f"while training ({type(e).__name__}); use smaller layers or "
                "train.batch_size") from None
        if log.run_id != resume_id:  # a fresh run: give it the epochs a checkpoint restored
            for logs in result.history[:result.resumed_from]:
                on_epoch(logs)

        # the epoch whose weights are saved: the last, or the best with train.restore_best
        final = result.kept
        stopping = {"epochs_trained": result.epochs_trained,
                    "stopped_early": result.stopped_early}
        if result.best_epoch is not None:
            stopping.update(best_epoch=result.best_epoch, restored_best=result.restored_best)
        every = max(1, len(result.history) // 10)
        info = {"name": name, **run.as_flat_dict(), **stopping, **init_info,
                "train_seconds": sum(h["seconds"] for h in result.history),
                # how the posterior narrowed, for the report: [epoch, median std] pairs
                "posterior_std_by_epoch": [[e, v] for e, v in {  # each epoch once
                    h["epoch"]: h["valid_posterior_std"]
                    for h in result.history[:1] + result.history[every - 1::every]}.items()]}
        with io.atomic_dir(out) as tmp:
            models.save(tmp, result.encoder, result.decoder, info)
            io.write_json(tmp / "mlflow.json", log.describe())
        summary = {k: v for k, v in final.items() if k.startswith(("train_", "valid_"))}
        summary.update(epochs=result.epochs_trained,
                       seconds=sum(h["seconds"] for h in result.history),
                       samples_per_s=result.samples_per_s)
        if run.train.patience is not None or run.train.restore_best:  # default runs: as before
            summary.update({k: v for k, v in stopping.items() if k != "epochs_trained"})
        io.write_json(metrics_path, summary)
        columns = list(result.history[0])
        io.write_text(curve_path, ",".join(columns) + "\n" + "".join(
            ",".join(f"{h[c]:.6g}" for c in columns) + "\n" for h in result.history))
        log.artifacts(out, "model")
        # the plain .keras files stay under model/; this is the same networks composed as
        # x -> decoder output at the posterior mean, through MLflow's Keras flavour
        # (two layers: x -> E_q[h1|x] -> p(x|h1)'s output)
        x_in = keras.Input((x_valid[0].size,), name="x")
        vae = models.VAE(result.encoder, result.decoder, run.model.decoder)
        log.keras_model(keras.Model(x_in, vae.at_posterior_mean(x_in),
                                    name=f"{name}_reconstruction"),
                        data.to_unit(x_valid[:2]))
        log.artifact(curve_path, name="curve.csv")
        log.metrics({"final_" + k: v for k, v in summary.items()})
    ckpt.unlink(missing_ok=True)  # the outputs are safe; the checkpoint has done its job
    print(f"train@{name}: valid bound {final['valid_bound']:.2f} nats, "
          f"{summary['seconds']:.0f}s, {result.samples_per_s:,.0f} samples/s -> {out}")


if __name__ == "__main__":
    cli.run(main, "train")
