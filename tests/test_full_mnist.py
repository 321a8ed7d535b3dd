"""Full MNIST as Burda et al. measured it: the official split from the shared idx files (skipped
where ../shared is absent), `data.source: mnist` giving the same digits, and the benchmark
overlay (benchmarks/full_mnist.yaml) as DVC will run it."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from repo_copy import ROOT, env_for, make_repo

from vaelab import benchmarks, data
from vaelab.config import DataConfig, ParamsError

SHARED = ROOT.parent / "shared" / "data" / "mnist"
needs_shared = pytest.mark.skipif(
    not (SHARED / "train-images-idx3-ubyte.gz").exists(),
    reason=f"full MNIST not at {SHARED} (the official idx files: docs/full_mnist.md)")

# The published label counts of MNIST's 60,000 training and 10,000 test digits: any other
# file (a subset, a shuffled mix of the two sets, a different release) fails them.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FULL = dict(valid_size=10_000, test_size=10_000, seed=0)


def rows(x: np.ndarray) -> list[bytes]:
    return sorted(hashlib.blake2b(a.tobytes(), digest_size=16).digest() for a in x)


@pytest.fixture(scope="module")
def official():
    return data.idx_split(SHARED)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    sizes = data.prepare(DataConfig(source="idx", path=str(SHARED), binarize="dynamic", **FULL), out)
    return sizes, {p: data.load_prepared(out, p) for p in data.PARTS}


@needs_shared
def test_the_shared_files_are_the_official_mnist(official):
    (x, y), (xt, yt) = official
    assert x.shape == (60_000, 28, 28) and xt.shape == (10_000, 28, 28)
    assert np.bincount(y).tolist() == TRAIN_COUNTS
    assert np.bincount(yt).tolist() == TEST_COUNTS


@needs_shared
def test_prepare_keeps_the_official_split(official, prepared):
    (x, y), (xt, yt) = official
    sizes, parts = prepared
    assert sizes == {"train": 50_000, "valid": 10_000, "test": 10_000}
    # test: every official test digit once, with its label; train + valid: the 60,000
    # training digits once each, labels kept
    assert rows(parts["test"]["x"]) == rows(xt)
    assert np.bincount(parts["test"]["y"]).tolist() == TEST_COUNTS
    assert rows(np.concatenate([parts["train"]["x"], parts["valid"]["x"]])) == rows(x)
    assert (np.bincount(parts["train"]["y"]) + np.bincount(parts["valid"]["y"])).tolist() \
        == TRAIN_COUNTS
    # the labels travel with their digits: the first training digit of the files, found
    # again in the prepared split, has the same label
    where = {a.tobytes(): i for i, a in enumerate(parts["train"]["x"])}
    hits = [(where[x[i].tobytes()], y[i]) for i in range(200) if x[i].tobytes() in where]
    assert len(hits) > 100 and all(parts["train"]["y"][j] == lab for j, lab in hits)


@needs_shared
def test_source_mnist_gives_the_same_digits_as_the_idx_files(official, prepared, monkeypatch,
                                                             tmp_path):
    """`data.source: mnist` (keras' download, here replaced by the same arrays) and `idx` at
    the shared folder prepare identical files: online and offline users get one benchmark."""
    import keras.datasets.mnist as kmnist
    (x, y), (xt, yt) = official
    monkeypatch.setattr(kmnist, "load_data", lambda *a, **k: ((x, y.astype(np.uint8)),
                                                              (xt, yt.astype(np.uint8))))
    data.prepare(DataConfig(source="mnist", binarize="dynamic", **FULL), tmp_path)
    _, parts = prepared
    for part in data.PARTS:
        got = data.load_prepared(tmp_path, part)
        for key in parts[part]:
            np.testing.assert_array_equal(got[key], parts[part][key], err_msg=f"{part}.{key}")


# ----------------------------------------------------------------------------------------
# the benchmark overlay

FILE = ROOT / "benchmarks" / "full_mnist.yaml"
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())
# Burda et al. 2015, Table 1: one and two stochastic layers x {VAE, IWAE} x k in {1, 5, 50}
# (IWAE k=1 is the VAE k=1), plus the article's eq. (5) and eq. (7) models
TABLE_1 = {(layers, family, k) for layers in (1, 2) for family, ks in
           (("elbo", (1, 5, 50)), ("iwae", (5, 50))) for k in ks}


def test_the_benchmark_holds_every_row_of_burdas_table_1():
    params = benchmarks.validate(BASE, benchmarks.resolved(benchmarks.load(FILE), ROOT))
    rows_ = {(r.model.layers, r.spec.family, r.k) for r in params.models.values()}
    assert TABLE_1 <= rows_
    objectives = {r.objective for r in params.models.values()}
    assert {"elbo_mc", "prior_mc", "elbo_analytic", "iwae"} <= objectives
    assert params.data.valid_size == 10_000 and params.data.test_size == 10_000
    assert params.evaluate.n_test == 10_000 and params.evaluate.k == 5000
    assert Path(params.data.path).is_absolute()
    # the cost is said before anything runs (the check stage prints this line)
    from vaelab import cost
    line = cost.estimate(params)
    assert "on 10,000 test digits" in line and "hours for 12 models" in line, line
    # the architecture is Burda's, inherited from params.yaml, not set by the overlay
    assert all(r.model.hidden == (200, 200) and r.model.latent == 50
               and r.model.activation == "tanh" for r in params.models.values())


def test_a_bad_benchmark_is_one_line(tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_text("name: b\nparams: {train.epochz: 3}\nmodels: {}\n")
    with pytest.raises(ParamsError, match=r"b\.yaml: params\.train\.epochz: no such key"):
        benchmarks.merged(BASE, benchmarks.load(bad))
    bad.write_text("name: b\nparams: {}\nmodels: {x: {objective: iwae, k: 0}}\n")
    with pytest.raises(ParamsError, match=r"models\.x\.k"):
        benchmarks.validate(BASE, benchmarks.load(bad))
    with pytest.raises(ParamsError, match=r"models\.nope: not in this benchmark"):
        benchmarks.select(benchmarks.load(FILE), ["vae", "nope"])


def test_dvc_reads_the_overrides_as_the_benchmark_means_them(tmp_path):
    """The -S arguments applied by DVC's own override code (what `dvc exp run -S` calls),
    then `dvc stage list` in a copy of the repo: exactly the selected models' stages
    (models: replaced, not merged), and params the check stage accepts."""
    from dvc.utils.hydra import apply_overrides

    from vaelab.config import load_params
    repo = make_repo(tmp_path, {})
    bench = benchmarks.resolved(
        benchmarks.select(benchmarks.load(FILE), ["vae_mc", "iwae_2l"]), ROOT)
    apply_overrides(repo / "params.yaml", benchmarks.overrides(bench))
    params = load_params(repo / "params.yaml")
    assert list(params.models) == ["vae_mc", "iwae_2l"]
    assert params.models["iwae_2l"].model.layers == 2 and params.models["iwae_2l"].k == 50
    # epochs: null resolves to the whole truncated schedule, 1 + 3 + 9 + 27 + 81 passes
    assert params.train.epochs == 121 and params.data.path == bench.params["data.path"]
    out = subprocess.run(["dvc", "stage", "list"], cwd=repo, capture_output=True, text=True,
                         env=env_for(), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    trains = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("train@")}
    assert trains == {"train@vae_mc", "train@iwae_2l"}
