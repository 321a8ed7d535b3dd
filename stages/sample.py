"""DVC stage `sample`: draw digits from each trained model's prior, save a grid, log it."""
from pathlib import Path

from vaelab.quiet import silence_tf

silence_tf()

from vaelab import cli, evaluate, figures, tracking  # noqa: E402
from vaelab.config import load_params  # noqa: E402


def main():
    p = cli.parser(__doc__)
    p.add_argument("--models", default="models", help="folder of trained models")
    p.add_argument("--out", default="samples")
    p.add_argument("names", nargs="*", help="models to sample (default: all in params.yaml)")
    args = p.parse_args()
    params = load_params(args.params)
    names = cli.model_names(params, args.names)
    client, _ = tracking.connect(params.mlflow.experiment)
    for name in names:
        folder = Path(args.models) / name
        images = evaluate.prior_samples(folder, params.sample.n, params.sample.seed)  # [n, 784]
        path = Path(args.out) / f"{name}.png"
        figures.save_grid(path, images, title=f"{name}: {params.sample.n} samples from the "
                          "prior, decoded (E[x|z])")
        log = tracking.RunLogger.of_model(folder, client)
        log.artifact(path, name="samples.png")  # one name in every run: compare view
        log.params({f"sample.{k}": v for k, v in vars(params.sample).items()})
        print(f"sample: {params.sample.n} digits from {name}'s prior -> {path}")


if __name__ == "__main__":
    cli.run(main, "sample")
