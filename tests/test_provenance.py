"""vaelab.provenance and scripts/evaluate_together.py (issue 22, item 3): a model folder is
checked against its own weights and against the digits it is scored on, not params.yaml."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vaelab import provenance
from vaelab.config import DataConfig, parse_params
from vaelab.data import load_prepared, prepare
from vaelab.quiet import silence_tf

silence_tf()
ROOT = Path(__file__).resolve().parents[1]
SIZES = {"valid_size": 200, "test_size": 200}


def save_model(folder: Path, objective: str = "elbo_analytic", k: int = 1, seed: int = 0,
               init: int = 0) -> dict:
    """A tiny untrained model saved as the train stage saves one (models.save)."""
    import keras

    from vaelab import models

    keras.utils.set_random_seed(init)
    run = parse_params({"data": {**SIZES, "seed": seed}, "model": {"latent": 3, "hidden": [8]},
                        "models": {folder.name: {"objective": objective, "k": k}}}).models[folder.name]
    m = models.VAE.build(run.model)
    models.save(folder, m.encoder, m.decoder, {"name": folder.name, **run.as_flat_dict()})
    return json.loads((folder / "model.json").read_text())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(DataConfig(**SIZES, seed=0), out)
    return out


def test_a_saved_folder_verifies_and_a_relabelled_one_is_refused(tmp_path):
    folder = tmp_path / "vae"
    info = save_model(folder)
    assert len(info[provenance.WEIGHTS_DIGEST]) == 64
    assert provenance.check_weights(folder, info) is True
    relabelled = {**info, "objective": "iwae", "k": 50}  # claim 4 flips on this
    (folder / "model.json").write_text(json.dumps(relabelled))
    with pytest.raises(provenance.ProvenanceError, match=r"vae: the weights or model\.json "
                       r"changed since training.*'iwae'") as e:
        provenance.check_weights(folder, relabelled)
    assert "\n" not in str(e.value)


def test_swapped_weights_are_refused(tmp_path):
    info = save_model(tmp_path / "a", init=0)
    save_model(tmp_path / "b", init=1)
    (tmp_path / "b" / "encoder.keras").replace(tmp_path / "a" / "encoder.keras")
    with pytest.raises(provenance.ProvenanceError):
        provenance.check_weights(tmp_path / "a", info)


def test_a_folder_from_before_the_digest_is_said_not_verified(tmp_path):
    info = save_model(tmp_path / "vae")
    del info[provenance.WEIGHTS_DIGEST]
    said = []
    assert provenance.check_weights(tmp_path / "vae", info, say=said.append) is False
    assert len(said) == 1 and "taken on trust" in said[0]


def test_a_model_of_another_seed_is_refused_on_digits_it_trained_on(tmp_path, prepared):
    test_x = load_prepared(prepared, "test")["x"]
    same = save_model(tmp_path / "same", seed=0)
    provenance.check_disjoint(tmp_path / "same", same, prepared, test_x)  # its own split
    other = save_model(tmp_path / "other", seed=1)
    with pytest.raises(provenance.ProvenanceError, match=r"other: \d+ of the 200 digits it "
                       r"would be scored on are among its own training digits") as e:
        provenance.check_disjoint(tmp_path / "other", other, prepared, test_x)
    assert int(str(e.value).split(": ")[1].split()[0]) > 100  # ~4000/5000 of them


# the script itself: one line, exit 2, before any model is evaluated

def run_script(tmp_path: Path, prepared: Path, *folders: Path) -> subprocess.CompletedProcess:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(SIZES)
    params["evaluate"].update(k=10, n_test=20, snr_k=[1, 2], snr_digits=1, snr_repeats=2,
                              prior_k=[1, 10], elbo_draws=5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_together.py"),
                           *map(str, folders), "--params", str(tmp_path / "params.yaml"),
                           "--data", str(prepared)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_evaluate_together_refuses_a_relabelled_folder(tmp_path, prepared):
    info = save_model(tmp_path / "vae")
    save_model(tmp_path / "iwae", objective="iwae", k=5)
    (tmp_path / "vae" / "model.json").write_text(json.dumps({**info, "objective": "iwae", "k": 5}))
    out = run_script(tmp_path, prepared, tmp_path / "iwae", tmp_path / "vae")
    assert out.returncode == 2, out.stdout + out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("evaluate_together: error: ") and "changed since training" in line
    assert "NLL" not in out.stdout  # nothing was evaluated


def test_evaluate_together_refuses_a_model_scored_on_its_training_digits(tmp_path, prepared):
    """data.seed 1: trained on most of the seed-0 test digits being scored."""
    save_model(tmp_path / "vae", seed=1)
    out = run_script(tmp_path, prepared, tmp_path / "vae")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "among its own training digits" in out.stderr
