"""DVC stage `check`, the first of the pipeline (always run, no TensorFlow: ~0.3 s).

DVC removes a stage's outputs just before running its command, and builds paths and
commands from params (`models:` keys) before any stage script could object. This stage
validates the whole params.yaml first; every other stage depends on its output (through
`prepare`), so a mistake stops `dvc repro` / `dvc exp run` here, before any output is
removed and before a command built from a bad name runs.

Its output, data/source.json, is the resolved data source and the sha256 of each file
behind `data.path`: replacing those files changes it, so `prepare` reruns.
"""
from pathlib import Path

from vaelab import cli, io
from vaelab.config import ParamsError, load_params
from vaelab.data import DataError


def source_files(source: str, path: str | None) -> dict[str, str]:
    """{file name: sha256} of what `data.path` names (the folder's files for idx)."""
    if source not in ("idx", "npz"):
        return {}  # bundled or downloaded by a fixed name: nothing local can change
    p = Path(path)
    if source == "npz":
        if not p.is_file():
            raise DataError(f"data.path: {path}: no such file (data.source is npz)")
        return {p.name: io.file_sha256(p)}
    if not p.is_dir():
        raise DataError(f"data.path: {path}: no such folder (data.source is idx)")
    return {f.name: io.file_sha256(f) for f in sorted(p.iterdir())
            if f.is_file() and "idx" in f.name}


# Importance samples per second for the default network on 2 CPU cores (README, Speed:
# 73 test images/s at k=5000): for the expected time of costly settings only.
SAMPLES_PER_S = 365_000
WARN_SECONDS = 3600


def evaluate_cost(params) -> tuple[int, float]:
    """(bytes, seconds) of the evaluate stage's log-weights: [k, n_test] float32 for
    posterior sampling plus [max prior_k, n_test] for prior sampling, for every model."""
    cfg = params.evaluate
    samples = cfg.n_test * (cfg.k + max(cfg.prior_k))
    return 4 * samples, len(params.models) * samples / SAMPLES_PER_S


def check_cost(params, warn_as: str | None = None) -> None:
    """Refuse an evaluate.k whose log-weights cannot fit in memory (here, before any
    training, and again in evaluate); with `warn_as`, warn about one that takes hours."""
    need, seconds = evaluate_cost(params)
    have = cli.available_bytes()
    cfg = params.evaluate
    if have is not None and need > have / 2:
        raise ParamsError(
            f"{params.path}: evaluate.k: {cfg.k:,} importance samples x {cfg.n_test} test "
            f"digits hold {need / 2**30:,.1f} GiB of log-weights, more than half the "
            f"{have / 2**30:.1f} GiB available; lower evaluate.k or evaluate.n_test")
    if warn_as and seconds > WARN_SECONDS:
        print(f"{warn_as}: warning: evaluate.k={cfg.k:,} on {cfg.n_test} digits x "
              f"{len(params.models)} models takes about {seconds / 3600:,.1f} hours on 2 CPU "
              "cores (default: about 1 minute per model)", flush=True)


def main():
    p = cli.parser(__doc__)
    p.add_argument("--out", default="data/source.json")
    args = p.parse_args()
    params = load_params(args.params)
    check_cost(params)
    d = params.data
    io.write_json(args.out, {"source": d.source, "path": d.path,
                             "files": source_files(d.source, d.path)})
    print(f"check: {args.params} is valid; {len(params.models)} models: "
          + ", ".join(params.models))


if __name__ == "__main__":
    cli.run(main, "check")
