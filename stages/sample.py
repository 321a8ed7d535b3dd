"""DVC stage `sample`: draw digits from each trained model's prior, save a grid, log it."""
from pathlib import Path

from vaelab import cli
from vaelab.config import load_params
from vaelab.quiet import use_backend


def main():
    p = cli.parser(__doc__)
    p.add_argument("--models", default="models", help="folder of trained models")
    p.add_argument("--out", default="samples")
    p.add_argument("names", nargs="*", help="models to sample (default: all in params.yaml)")
    args = p.parse_args()
    params = load_params(args.params)
    use_backend(params.train.backend)  # before anything imports Keras
    from vaelab import evaluate, figures, tracking
    names = cli.model_names(params, args.names)
    client, _ = tracking.connect(params.mlflow.experiment)
    # Every model's files and training run first: a bad one stops the stage before any
    # grid is written or logged.
    logs = {n: tracking.RunLogger.of_model(Path(args.models) / n, client) for n in names}
    loaded = {n: evaluate.Loaded.from_folder(Path(args.models) / n) for n in names}
    for name in names:
        images = evaluate.prior_samples_of(loaded[name], params.sample.n,
                                           params.sample.seed)  # [n, 784]
        path = Path(args.out) / f"{name}.png"
        figures.save_grid(path, images, title=f"{name}: {params.sample.n} samples from the "
                          "prior, decoded (E[x|z])")
        logs[name].artifact(path, name="samples.png")  # one name in every run: compare view
        logs[name].params({f"sample.{k}": v for k, v in vars(params.sample).items()})
        print(f"sample: {params.sample.n} digits from {name}'s prior -> {path}")


if __name__ == "__main__":
    cli.run(main, "sample")
