"""`python -m stages.sample` run by hand: --count, --seed and --out over params.yaml, nothing
written into the model's training run unless --log (which the pipeline passes), bad values
one line. A subprocess, as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from repo_copy import env_for

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"model": {"latent": 3, "hidden": [16]},
          "models": {"vae": {"objective": "elbo_analytic", "k": 1}},
          "sample": {"n": 9, "seed": 1}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """params.yaml, an (untrained: sampling does not care) model folder whose
    mlflow.json names a FINISHED run of a temp store."""
    from vaelab.quiet import silence_tf

    silence_tf()
    import keras

    from vaelab import models, tracking
    from vaelab.config import parse_params

    root = tmp_path_factory.mktemp("sample")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    run = parse_params(PARAMS).models["vae"]
    keras.utils.set_random_seed(0)
    vae = models.VAE.build(run.model)
    models.save(root / "models" / "vae", vae.encoder, vae.decoder,
                {"name": "vae", **run.as_flat_dict()})
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)  # the store's artifacts go to ./mlruns
        with tracking.model_run("vae-iwae", "vae", {"k": 1}, {}) as log:
            (root / "models" / "vae" / "mlflow.json").write_text(json.dumps(log.describe()))
    return root


def sample(root: Path, *args):
    return subprocess.run([sys.executable, "-m", "stages.sample", "--model", "models/vae",
                           *map(str, args)], cwd=root, capture_output=True, text=True,
                          timeout=600, env=env_for(PYTHONPATH=str(ROOT),
                                                   TF_CPP_MIN_LOG_LEVEL="3",
                                                   MLFLOW_TRACKING_URI=_uri(root)))


def _uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def the_run(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(_uri(root))
    run_id = json.loads((root / "models" / "vae" / "mlflow.json").read_text())["run_id"]
    run = client.get_run(run_id)
    return run, [a.path for a in client.list_artifacts(run_id)]


def test_by_hand_the_flags_decide_and_the_training_run_is_left_alone(folder):
    from vaelab import evaluate, models

    before = the_run(folder)
    out = sample(folder, "--count", 4, "--seed", 7, "--out", "mine/grid.png",
                 "--arrays", "mine/digits.npz")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (folder / "mine" / "grid.png").stat().st_size > 0
    assert not (folder / "samples").exists()  # not the pipeline's grid
    with np.load(folder / "mine" / "digits.npz") as z:
        got = z["samples"]
    m = models.VAE.from_folder(folder / "models" / "vae")
    np.testing.assert_allclose(got, evaluate.prior_samples_of(m, 4, 7), atol=1e-6)
    assert not np.allclose(got, evaluate.prior_samples_of(m, 4, 1), atol=1e-3)
    after = the_run(folder)
    assert after[1] == before[1] and after[0].data.params == before[0].data.params
    assert after[0].data.tags == before[0].data.tags


def test_with_log_the_grid_and_its_settings_go_into_the_training_run(folder):
    out = sample(folder, "--log", "--out", "samples/vae.png")
    assert out.returncode == 0, out.stderr[-3000:]
    run, artifacts = the_run(folder)
    assert "samples.png" in artifacts
    assert run.data.params["sample.n"] == "9" and run.data.params["sample.seed"] == "1"
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("flag,value,says", [("--count", 0, "--count: must be a positive "
                                              "integer, got 0"),
                                             ("--seed", -1, "--seed: must be an integer >= 0, "
                                              "got -1")])
def test_a_bad_value_is_one_line_and_writes_nothing(folder, tmp_path, flag, value, says):
    out = sample(folder, flag, value, "--out", tmp_path / "grid.png", "--log")
    assert out.returncode != 0
    msg = out.stderr.strip()
    assert "\n" not in msg and says in msg and "Traceback" not in msg, msg
    assert not (tmp_path / "grid.png").exists()
