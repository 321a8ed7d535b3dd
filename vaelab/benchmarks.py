"""Named configurations that reproduce a published table, as overlays over params.yaml.

A benchmark file (benchmarks/<name>.yaml) holds `name`, `params` (dotted keys set over
params.yaml) and `models` (replacing params.yaml's `models:`). `overrides` turns it into
the `-S` arguments of one `dvc exp run -n <name>`, so the run is an ordinary named DVC
experiment; `merged` applies it to params.yaml's contents for validation before anything runs.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import ParamsError, Params, parse_params

# keys whose value is a path: written relative to the repo root in the file, passed to DVC
# as absolute paths so that a queued or --temp experiment (run in another folder) finds them
PATH_KEYS = ("data.path",)


@dataclass(frozen=True)
class Benchmark:
    name: str
    params: dict[str, Any]
    models: dict[str, dict]
    file: str


def load(path: str | Path) -> Benchmark:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ParamsError(f"{path}: no such benchmark file; known: {', '.join(known) or 'none'}")
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file")
    if not isinstance(raw, dict) or set(raw) - {"name", "params", "models"} \
            or not isinstance(raw.get("params", {}), dict) \
            or not isinstance(raw.get("models", {}), dict) or not raw.get("name"):
        raise ParamsError(f"{path}: must be a mapping with `name`, `params` (dotted keys) and "
                          "`models` (entries as in params.yaml) only")
    return Benchmark(str(raw["name"]), dict(raw.get("params") or {}),
                     dict(raw.get("models") or {}), str(path))


def select(bench: Benchmark, only: list[str] | None) -> Benchmark:
    """The benchmark with only the named models (a CPU budget trains a subset of rows)."""
    if not only:
        return bench
    unknown = [m for m in only if m not in bench.models]
    if unknown:
        raise ParamsError(f"{bench.file}: models.{unknown[0]}: not in this benchmark; "
                          f"its models: {', '.join(bench.models)}")
    return Benchmark(bench.name, bench.params, {m: bench.models[m] for m in only}, bench.file)


def resolved(bench: Benchmark, root: Path) -> Benchmark:
    """Path values made absolute against the repo root."""
    params = {k: (str((root / v).resolve()) if k in PATH_KEYS and v else v)
              for k, v in bench.params.items()}
    return Benchmark(bench.name, params, bench.models, bench.file)


def merged(base: dict, bench: Benchmark) -> dict:
    """params.yaml's contents with the benchmark applied, as `dvc exp run -S` would."""
    out = copy.deepcopy(base)
    for dotted, value in bench.params.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ParamsError(f"{bench.file}: params.{dotted}: params.yaml has no "
                                  f"section {p!r}")
            node = node[p]
        if leaf not in node:
            raise ParamsError(f"{bench.file}: params.{dotted}: no such key in params.yaml")
        node[leaf] = value
    out["models"] = copy.deepcopy(bench.models)
    return out


def validate(base: dict, bench: Benchmark, path: str = "params.yaml") -> Params:
    """The params the experiment will run with, checked as the check stage will check them."""
    return parse_params(merged(base, bench), f"{path} + {bench.file}")


def _value(v: Any) -> str:
    # Hydra's override grammar (what `dvc exp run -S` parses): JSON-like flow values, null
    # for None; strings with a path separator are quoted
    if v is None:
        return "null"
    if isinstance(v, str):
        return json.dumps(v) if any(c in v for c in "/\\ :,{}[]=") else v
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return json.dumps(v)


def overrides(bench: Benchmark) -> list[str]:
    """The -S arguments: each key set, then models: removed and added whole (a plain set
    would merge the benchmark's models into params.yaml's)."""
    out = [f"{k}={_value(v)}" for k, v in bench.params.items()]
    return out + ["~models", f"+models={_value(bench.models)}"]
