"""The device call's bookkeeping (scripts/gpu_run.py, scripts/gpu_readme.py), without a GPU:
what it reads from DVC's output, the MLflow store and the peers, and the README block it
writes. The call itself is rehearsed on the CPU with ALLOW_CPU=1 (README, Backends and GPUs)."""
from __future__ import annotations

import importlib.util
import sqlite3
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_run = load("gpu_run")
gpu_readme = load("gpu_readme")


def test_stage_seconds_from_dvc_output():
    lines = [(0.5, "Running stage 'check':"), (1.0, "> python -m stages.check"),
             (3.0, "Running stage 'train@vae':"), (10.5, "Running stage 'evaluate':")]
    assert gpu_run.stage_seconds(lines, 12.0) == {"check": 2.5, "train@vae": 7.5,
                                                  "evaluate": 1.5}


def test_ratios_per_batch_against_each_peer():
    rec = {"vaelab": [{"what": "fp32 matmul 2048x2048", "gflops": 1.0},
                      {"what": "train iwae k=50 batch=100", "samples_per_s": 300.0},
                      {"what": "train iwae k=50 batch=1000", "samples_per_s": 1000.0}],
           "peers": [{"framework": "torch", "batch": 100, "samples_per_s": 200.0},
                     {"framework": "jax", "batch": 100, "samples_per_s": 600.0},
                     {"framework": "torch-compile", "batch": 1000, "error": "cut"}]}
    r100, r1000 = gpu_run.ratios(rec)
    assert r100["vaelab_over"] == {"torch": 1.5, "jax": 0.5}
    assert r1000["batch"] == 1000 and r1000["vaelab_over"] == {}  # a failed peer is no ratio


def test_slug_names_the_device():
    assert gpu_run.slug("NVIDIA H200") == "h200"
    assert gpu_run.slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"


def store(tmp_path: Path, runs) -> Path:
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("CREATE TABLE runs (run_uuid TEXT, name TEXT, status TEXT)")
        db.execute("CREATE TABLE tags (key TEXT, value TEXT, run_uuid TEXT)")
        for i, (name, status, device) in enumerate(runs):
            db.execute("INSERT INTO runs VALUES (?, ?, ?)", (str(i), name, status))
            db.execute("INSERT INTO tags VALUES ('vaelab.device', ?, ?)", (device, str(i)))
            db.execute("INSERT INTO tags VALUES ('other', 'x', ?)", (str(i),))
    return tmp_path


@pytest.mark.parametrize("runs, finished, on_device", [
    ([("vae", "FINISHED", "gpu:0 (NVIDIA H200)"), ("iwae", "FINISHED", "gpu:0 (NVIDIA H200)")],
     True, True),
    ([("vae", "FINISHED", "gpu:0 (NVIDIA H200)"), ("iwae", "FAILED", "cpu:0 (cpu)")],
     False, False),
])
def test_check_store_reads_status_and_device_tags(tmp_path, runs, finished, on_device):
    got = gpu_run.check_store(store(tmp_path, runs), "NVIDIA H200")
    assert (got["all_finished"], got["all_on_device"]) == (finished, on_device)
    assert len(got["runs"]) == 2


def test_check_store_without_a_store(tmp_path):
    assert gpu_run.check_store(tmp_path, "NVIDIA H200")["all_finished"] is False


def test_readme_block_names_figures_and_targets():
    result = {"started": "2026-12-01 12:00:00 UTC", "device": "NVIDIA H200", "commit": "abc1234",
              "budget_s": 470, "wall_s": 400.0, "versions": {"jax": "0.11.2", "keras": "3.15.1"},
              "parts": {
                  "gpucheck": {"status": "ok", "models_seconds": 55.5, "models": {
                      "vae": {"train_seconds": 10.0, "eval_seconds": 3.0}}},
                  "bench": {"status": "ok", "vaelab": [
                      {"what": "evaluate L_5000 on 500 images", "images_per_s": 12000.0}],
                      "ratios": [{"batch": 1000, "vaelab": 400000.0,
                                  "peers": {"torch": 200000.0, "jax": 500000.0},
                                  "vaelab_over": {"torch": 2.0, "jax": 0.8}}]},
                  "dvc": {"status": "timeout", "error": "dvc repro cut at its time limit",
                          "runs": [], "all_finished": False, "all_on_device": False}}}
    text = "\n".join(gpu_readme.table(result, "docs/gpu/x.json"))
    assert "55.5 s (vae 10.0+3.0) | < 60 s" in text
    assert "400,000 / 200,000 / 500,000; 0.80x the fastest peer, 2.00x PyTorch eager" in text
    assert "| 12,000 | >= 10,000 |" in text
    assert "timeout: dvc repro cut at its time limit" in text


def test_readme_has_the_generated_block():
    text = gpu_readme.TARGET.read_text()
    assert gpu_readme.START in text and gpu_readme.END in text


def test_readme_merges_a_call_continued_on_the_same_day():
    first = {"started": "2026-12-01 12:00:00 UTC", "device": "NVIDIA H200", "_path": "a.json",
             "parts": {"gpucheck": {"status": "ok"}, "dvc": {"status": "timeout"}}}
    second = {"started": "2026-12-01 12:30:00 UTC", "device": "NVIDIA H200", "_path": "b.json",
              "parts": {"dvc": {"status": "ok"}}}
    other_day = {"started": "2026-11-30 09:00:00 UTC", "device": "NVIDIA H200",
                 "_path": "c.json", "parts": {"bench": {"status": "ok"}}}
    got = gpu_readme.newest([first, second, other_day])
    assert got["parts"] == {"gpucheck": {"status": "ok"}, "dvc": {"status": "ok"}}
    assert got["_path"] == "a.json, b.json"


def test_full_mnist_state_round_trip(tmp_path):
    """The checkpoints a cut call packs are what the next call unpacks into its clone."""
    import shutil

    repo = tmp_path / "repo"
    (repo / ".checkpoints").mkdir(parents=True)
    (repo / ".checkpoints" / "iwae-abc.npz").write_bytes(b"weights")
    lines = [(1.0, "train@iwae: iwae k=50, 3280 epochs on 50000 digits"),
             (2.0, "iwae epoch 6/3280  train bound -95.1  valid bound -96.0  1.1s"),
             (3.0, "iwae epoch 7/3280  train bound -95.0  valid bound -95.9  1.0s")]
    assert gpu_run._epochs_done(lines) == {"iwae": 7}
    packed = gpu_run._pack_state(repo)
    again = tmp_path / "next"
    again.mkdir()
    shutil.unpack_archive(packed, again)
    assert (again / ".checkpoints" / "iwae-abc.npz").read_bytes() == b"weights"
    assert gpu_run._pack_state(again / "nothing") is None
