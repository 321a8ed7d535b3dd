"""Hostile input, round three (issue 22): binary digits, conversion hints, counts whose cost
has no bound, TensorFlow on the JAX path."""
from __future__ import annotations

import numpy as np
import pytest
from test_data import write_pair

from vaelab.config import DataConfig
from vaelab.data import DataError, binarize, load_prepared, load_source, prepare


@pytest.fixture(scope="module")
def bits():
    """Real digits binarized and stored the way binarized MNIST often is: uint8 0/1."""
    x, y = load_source("mnist5k")
    return (x[:600] > 127).astype(np.uint8), y[:600]


def lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line]


# ----------------------------------------------------------------------------------------
# binary digits

@pytest.mark.parametrize("mode", ["dynamic", "static", "threshold"])
def test_binary_npz_is_used_as_the_digits_with_one_line(bits, mode, tmp_path, capsys):
    x, y = bits
    path = tmp_path / "binarized.npz"
    np.savez(path, x=x, y=y)
    cfg = DataConfig(source="npz", path=str(path), binarize=mode, valid_size=100,
                     test_size=100, seed=0)
    prepare(cfg, tmp_path / "out")
    [line] = lines(capsys)
    assert "only 0 and 1" in line and "binary" in line and str(path) in line, line
    digits = {a.tobytes() for a in x}
    for part in ("train", "valid", "test"):
        d = load_prepared(tmp_path / "out", part)
        assert set(np.unique(d["x"])) == {0, 255}
        # whatever the mode and draw, a binary digit binarizes to itself
        b = binarize(d["x"], "static" if mode == "dynamic" else mode, seed=7)
        assert all(row.reshape(28, 28).tobytes() in digits for row in b)
        if "xb" in d:  # the fixed bits the models are scored (and static ones trained) on
            np.testing.assert_array_equal(d["xb"], b)


def test_binary_idx_folder_is_used_as_the_digits(bits, tmp_path, capsys):
    x, y = bits
    write_pair(tmp_path / "idx", "train", x[:500], y[:500])
    write_pair(tmp_path / "idx", "t10k", x[500:], y[500:], gz=True)
    cfg = DataConfig(source="idx", path=str(tmp_path / "idx"), valid_size=50, test_size=50)
    prepare(cfg, tmp_path / "out")
    assert len(lines(capsys)) == 1
    test = load_prepared(tmp_path / "out", "test")
    np.testing.assert_array_equal(test["xb"].reshape(-1, 28, 28) * 255, test["x"])
    assert {a.tobytes() for a in test["xb"].reshape(-1, 28, 28)} <= {a.tobytes() for a in x[500:]}


def test_binary_digits_with_binarize_none_are_grey_0_and_255(bits, tmp_path, capsys):
    path = tmp_path / "b.npz"
    np.savez(path, x=bits[0], y=bits[1])
    prepare(DataConfig(source="npz", path=str(path), binarize="none", valid_size=100,
                       test_size=100), tmp_path / "out")
    [line] = lines(capsys)
    assert "binarize none" in line and "0 and 255" in line
    assert set(np.unique(load_prepared(tmp_path / "out", "train")["x"])) == {0, 255}


def test_binary_training_files_with_grey_test_files_are_refused(bits, tmp_path):
    x, y = bits
    grey, _ = load_source("mnist5k")
    write_pair(tmp_path / "idx", "train", x[:500], y[:500])
    write_pair(tmp_path / "idx", "t10k", grey[:100], y[:100])
    cfg = DataConfig(source="idx", path=str(tmp_path / "idx"), valid_size=50, test_size=50)
    with pytest.raises(DataError, match=r"data\.path: .*binary digits.*grey values") as e:
        prepare(cfg, tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_grey_digits_are_not_taken_for_binary(tmp_path, capsys):
    prepare(DataConfig(valid_size=100, test_size=100), tmp_path / "out")
    assert not any("binary" in line for line in lines(capsys))
    assert load_prepared(tmp_path / "out", "train")["x"].max() == 255


# ----------------------------------------------------------------------------------------
# conversion hints: the right one for the values at hand

@pytest.mark.parametrize("x, want, never", [
    (np.full((3, 28, 28), 40000, np.uint16), "np.rint(x / 257)", "x * 255"),
    (np.full((3, 28, 28), 200, np.int64), "x.astype(np.uint8)", "x * 255"),
    (np.where(np.eye(28)[None] > 0, np.nan, 0.5).repeat(3, 0), "3 image(s) hold NaN", "x * 255"),
    (np.full((3, 28, 28), 0.5, np.float32), "np.rint(x * 255)", "257"),
    (np.full((3, 28, 28), -1.0), "negative", "x * 255"),
], ids=["uint16", "int64-grey", "nan", "float-unit", "negative"])
def test_npz_conversion_hint_fits_the_values(x, want, never, tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, x=x, y=np.zeros(len(x), np.int64))
    with pytest.raises(DataError) as e:
        load_source("npz", str(path))
    assert want in str(e.value) and never not in str(e.value), str(e.value)


# ----------------------------------------------------------------------------------------
# the JAX path imports no TensorFlow, even where it is installed

def test_train_stage_on_jax_imports_no_tensorflow_and_prints_no_absl_lines(tmp_path):
    """TFP's JAX substrate imported TensorFlow (to copy docstrings) whenever it is installed:
    absl and CUDA-driver lines on stderr, seconds of start-up (vaelab/backend.py)."""
    import subprocess
    import sys

    from repo_copy import env_for, make_repo

    repo = make_repo(tmp_path / "repo", {
        "data": {"valid_size": 100, "test_size": 100}, "model": {"latent": 3, "hidden": [10]},
        "train": {"epochs": 1, "backend": "jax", "valid_k": 5},
        "models": {"vae": {"objective": "elbo_analytic", "k": 1}}})
    env = env_for()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell: TF's C++ lines would show
    assert subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=repo, env=env,
                          capture_output=True).returncode == 0
    probe = ("import atexit, runpy, sys; sys.argv = ['train', '--name', 'vae'];"
             "atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules));"
             "runpy.run_module('stages.train', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", probe], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tensorflow imported: False" in out.stdout, out.stdout
    assert not any(w in out.stderr for w in ("absl", "cuda drivers", "oneDNN")), out.stderr


# ----------------------------------------------------------------------------------------
# every count has an upper bound, enforced by `check` from a cost estimate

def checked(edit, monkeypatch=None):
    """params.yaml edited, parsed and costed as the check stage does; the refusal or None."""
    import yaml

    from vaelab import cli
    from vaelab.config import ParamsError, parse_params
    from vaelab.cost import check_cost

    if monkeypatch is not None:  # the same verdicts on any machine
        monkeypatch.setattr(cli, "available_bytes", lambda: 16 * 2**30)
    raw = yaml.safe_load(open("params.yaml"))
    edit(raw)
    try:
        check_cost(parse_params(raw))
    except ParamsError as e:
        assert "\n" not in str(e)
        return str(e)
    return None


def test_the_committed_params_pass_the_cost_check(monkeypatch, capsys):
    assert checked(lambda r: None, monkeypatch) is None
    assert capsys.readouterr().out == ""
    # Burda et al.'s whole schedule on full MNIST (about a day on 2 cores) is allowed
    assert checked(lambda r: (r["data"].update(source="mnist", test_size=10000),
                              r["train"].update(schedule="burda", epochs=None)), monkeypatch) is None


@pytest.mark.parametrize("edit, key", [
    (lambda r: r["train"].update(schedule="burda", schedule_stages=20, epochs=None),
     "train.schedule_stages: 20 with train.epochs null"),
    (lambda r: r["train"].update(epochs=10**9), "train.epochs: 1,000,000,000"),
    (lambda r: r["models"]["iwae"].update(epochs=10**9), "models.iwae.epochs"),
    (lambda r: r["sample"].update(n=10**9), "sample.n: 1,000,000,000"),
    (lambda r: r["train"].update(valid_k=10**9), "train.valid_k: 1,000,000,000"),
    (lambda r: r["models"]["iwae"].update(k=10**7), "models.iwae.k"),
    (lambda r: r["models"].update(miwae={"objective": "miwae", "k": 10, "m": 10**7}),
     "models.miwae.m"),
    (lambda r: r["model"].update(latent=10**9), "model.latent"),
    (lambda r: r["model"].update(hidden=[10**6, 10**6]), "model.hidden"),
    (lambda r: r["models"]["vae"].update(hidden=[10**6]), "models.vae.hidden"),
    (lambda r: (r["model"].update(layers=2, h1_latent=10**8),
                r["models"]["vae"].update(objective="elbo_mc")), "model.h1_latent"),
    (lambda r: r["evaluate"].update(k=10**9), "evaluate.k: 1,000,000,000"),
    (lambda r: r["evaluate"].update(k=10**6, n_test=200, chunk=10**6), "evaluate.chunk"),
    (lambda r: r["evaluate"].update(snr_k=[1, 10**9]), "evaluate.snr_k"),
    (lambda r: r["evaluate"].update(snr_repeats=10**7), "evaluate.snr_repeats"),
], ids=["schedule-20-null", "epochs", "model-epochs", "sample-n", "valid-k", "k", "m",
        "latent", "hidden", "model-hidden", "h1-latent", "evaluate-k", "chunk", "snr-k",
        "snr-repeats"])
def test_an_unbounded_count_is_refused_by_check_naming_its_key(edit, key, monkeypatch):
    error = checked(edit, monkeypatch)
    assert error is not None and error.startswith("params.yaml: ") and key in error.split(": about")[0], error
    assert "GiB" in error or "years" in error or "days" in error
    if "valid_k" in key:  # the train stage's out-of-memory line blamed model.hidden
        assert "model.hidden" not in error


def test_a_million_schedule_stages_is_one_line_and_does_not_hang_check(tmp_path):
    import subprocess
    import sys

    import yaml
    from repo_copy import env_for

    raw = yaml.safe_load(open("params.yaml"))
    raw["train"].update(schedule="burda", schedule_stages=1_000_000)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-m", "stages.check", "--params",
                          str(tmp_path / "params.yaml"), "--out", str(tmp_path / "s.json")],
                         capture_output=True, text=True, env=env_for(), timeout=60)
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.splitlines()
    assert "train.schedule_stages: must be at most 40" in line and "1000000" in line
