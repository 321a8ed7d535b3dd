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

from vaelab import cli, io, registry, tracking
from vaelab.config import load_params
from vaelab.cost import check_cost, estimate
from vaelab.data import DataError


def source_files(source: str, path: str | None) -> dict[str, str]:
    """{file name: sha256} of what `data.path` names (a folder's files of the source's kind)."""
    spec = registry.SOURCES[source]
    if not spec.path:
        return {}  # bundled or downloaded by a fixed name: nothing local can change
    p = Path(path)
    if not (p.is_file() if spec.path == "file" else p.is_dir()):
        raise DataError(f"data.path: {path}: no such {spec.path} (data.source is {source})")
    if spec.path == "file":
        return {p.name: io.file_sha256(p)}
    return {f.name: io.file_sha256(f) for f in sorted(p.glob(spec.path_files)) if f.is_file()}


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
    print(f"check: {estimate(params)}")
    for run_id in tracking.mark_stale_runs(params.mlflow.experiment):
        print(f"check: MLflow run {run_id} was left RUNNING by a process that no longer "
              "exists (killed): marked KILLED")


if __name__ == "__main__":
    cli.run(main, "check")
