"""One code path, two Keras backends: the JAX path imports no TensorFlow, the maths tests
pass on JAX too, a model trained on one backend is evaluated on the other, and both give
the same bound within Monte Carlo error. The backend is fixed per process, so each backend
runs in a subprocess of its own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Put in front of a script: any import of TensorFlow, MLflow or DVC fails, as on the GPU
# machine (a meta-path hook, not a None in sys.modules, which Keras would take for an
# imported TensorFlow).
NO_TF = textwrap.dedent("""
    import sys
    class NoTF:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "mlflow", "dvc"):
                raise ImportError(f"no {name} on this machine")
    sys.meta_path.insert(0, NoTF)
""")


def run_py(code: str, backend: str, *args, timeout=600, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_vaelab_on_jax_needs_no_tensorflow():
    """Every vaelab module imports with TensorFlow unimportable. (Where TF is installed it
    is not imported either: tests/test_faults_input.py asks sys.modules after a training.)"""
    code = NO_TF + textwrap.dedent("""
        from vaelab import backend, bench, data, evaluate, gpucheck, models, objectives, train
        from vaelab.quiet import use_backend
        use_backend("jax")
        assert backend.NAME == "jax" and "substrates.jax" in backend.tfd.__name__, backend.tfd
        print("ok", backend.devices())
    """)
    assert "ok" in run_py(code, "jax").stdout


# --------------------------------------------------------------------------------------
# train on one backend, evaluate on the other

TINY = {"model": {"latent": 5, "hidden": [20]}, "train": {"epochs": 1, "batch_size": 50},
        "models": {"m": {"objective": "iwae", "k": 5}}}
K, N = 400, 240  # importance samples and test digits for the cross-backend comparison

SCRIPT = textwrap.dedent("""
    import io, json, sys
    from pathlib import Path
    import numpy as np
    from vaelab import backend, data, evaluate, models, train
    from vaelab.config import parse_params
    root, todo = Path(sys.argv[1]), sys.argv[2:]
    x, _ = data.load_source("mnist5k")
    probe = x[700:700 + {N}].reshape({N}, -1).astype(np.float32) / 255.0
    xb = (probe > 0.5).astype(np.float32)
    for job in todo:
        if job == "train":
            params = parse_params({{**{TINY}, "train": {{**{TINY}["train"], "backend": backend.NAME}}}})
            run = params.models["m"]
            r = train.train(run, x[:600], x[600:700], progress=train.Progress("m", 1, io.StringIO()))
            models.save(root / backend.NAME, r.encoder, r.decoder, run.as_flat_dict())
        else:  # evaluate the model another backend (or this one) trained
            m = models.VAE.from_folder(root / job)
            loc, scale = models.posterior_params(m.encoder, probe)
            lw, _ = evaluate.log_weights(m, xb, {K}, 100, {N}, seed=3)
            np.savez(root / f"{{job}}_on_{{backend.NAME}}.npz", loc=loc, scale=scale, lw=lw,
                     logits=np.asarray(m.decoder(loc)))
""").format(N=N, K=K, TINY=json.dumps(TINY))


@pytest.fixture(scope="module")
def crossed(tmp_path_factory):
    """A model trained on each backend, each evaluated on both. TF's process imports TF; the
    JAX process runs with TensorFlow unimportable."""
    root = tmp_path_factory.mktemp("backends")
    run_py(SCRIPT, "tensorflow", root, "train")
    run_py(NO_TF + SCRIPT, "jax", root, "train", "tensorflow", "jax")
    run_py(SCRIPT, "tensorflow", root, "tensorflow", "jax")
    return root


@pytest.mark.parametrize("trained_on", ["tensorflow", "jax"])
def test_model_exported_on_one_backend_loads_and_evaluates_on_the_other(crossed, trained_on):
    info = json.loads((crossed / trained_on / "model.json").read_text())
    assert info["train.backend"] == trained_on
    with np.load(crossed / f"{trained_on}_on_tensorflow.npz") as a, \
            np.load(crossed / f"{trained_on}_on_jax.npz") as b:
        # the networks are the same functions on both backends ...
        for name in ("loc", "scale", "logits"):
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
        # ... and L_K is the same bound up to Monte Carlo error (other random streams):
        # per digit, the difference of two independent estimates has mean 0; the standard
        # error of its mean over the digits is measured from their spread (each digit's
        # draws are its own). 240 digits make it ~0.07 nats (L ~ -510): a bias of 0.5 nats
        # (0.1% of |L|) on one backend fails, measured by injecting one into the JAX path.
        from scipy.special import logsumexp

        l_a, l_b = (logsumexp(lw, axis=0) - np.log(K) for lw in (a["lw"], b["lw"]))  # [N]
        assert a["lw"].shape == b["lw"].shape == (K, N)
        assert not np.array_equal(a["lw"], b["lw"])  # really other random numbers
        d = l_a - l_b
        se = d.std(ddof=1) / np.sqrt(N)
        assert se < 0.1, se  # the power above: the test can see a 0.5-nat bias
        assert abs(d.mean()) < 4.5 * se, (d.mean(), se)


def test_trained_models_differ_by_backend_only_by_random_stream(crossed):
    """Same config, other random numbers (initial weights, samples): other weights. (How
    close their bounds are is training noise, which one run per backend cannot measure:
    the bound's equality across backends is tested on one model above, and JAX training
    by the tests rerun on JAX below, training improving the bound among them.)"""
    with np.load(crossed / "tensorflow_on_tensorflow.npz") as a, \
            np.load(crossed / "jax_on_tensorflow.npz") as b:
        assert not np.allclose(a["loc"], b["loc"])


# --------------------------------------------------------------------------------------
# the maths tests and the training tests, on JAX

def test_maths_and_training_tests_pass_on_jax():
    """tests/test_objectives.py and tests/test_models.py (closed forms, identities, gradients
    through the reparameterized sample), the determinism/resume tests of test_train.py and
    the two-layer tests of test_layers.py,
    run again in a process on JAX. float64 tests need JAX's x64 mode."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_objectives.py", "tests/test_estimators.py", "tests/test_snr.py",
         "tests/test_models.py", "tests/test_train.py", "tests/test_layers.py",
         "-k", "not killed_stage and not diverging_stage and not params_mistake "
               "and not atomic and not read_only and not prepared"],
        cwd=ROOT, env={**os.environ, "KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "1"},
        # a hang guard only: it took over 20 minutes on a 2-core machine running a second suite
        capture_output=True, text=True, timeout=2400)
    tail = proc.stdout[-3000:]
    assert proc.returncode == 0, tail + proc.stderr[-2000:]
    assert " passed" in tail and "failed" not in tail, tail


# --------------------------------------------------------------------------------------
# data parallel (train.devices) on two virtual CPU devices

DATA_PARALLEL = textwrap.dedent("""
    import dataclasses, json, sys
    import jax, numpy as np
    from vaelab import train
    from vaelab.config import load_params
    from vaelab.config import UserError
    run = load_params("params.yaml").models["iwae"]
    rng = np.random.RandomState(0)
    x, xv = ((rng.rand(n, 28, 28) < 0.3).astype(np.uint8) for n in (600, 200))
    out = {"devices": len(jax.devices())}
    for devices, batch in [(1, 100), (2, 100), (1, 75), (2, 75)]:
        t = dataclasses.replace(run.train, backend="jax", epochs=2, batch_size=batch,
                                devices=devices, valid_k=50)
        r = train.train(dataclasses.replace(run, train=t), x, xv)
        w = [w.tolist() for w in r.encoder.get_weights() + r.decoder.get_weights()]
        out[f"{devices}x{batch}"] = {"weights": w, "valid": r.history[-1]["valid_bound"],
                                     "on": len(r.encoder.weights[0].value.sharding.device_set)}
    shards = train.DataParallel(2).batches(np.zeros((1, 100, 784), np.float32))
    out["shards"] = sorted(s.data.shape[1] for s in shards.addressable_shards)
    try:
        train.DataParallel(3)
    except UserError as e:
        out["too_many"] = str(e)
    print(json.dumps(out))
""")


def test_data_parallel_on_two_devices_gives_one_devices_weights():
    """train.devices: 2 on two virtual CPU devices: each batch is split in two halves (one
    per device), and, as the noise is drawn from the same seeds, training ends at one
    device's weights up to the order of float sums; a batch that does not split evenly is
    replicated (same result). More devices than JAX sees: one line naming the key."""
    out = json.loads(run_py(DATA_PARALLEL, "jax",
                            XLA_FLAGS="--xla_force_host_platform_device_count=2"
                            ).stdout.strip().splitlines()[-1])
    assert out["devices"] == 2 and out["shards"] == [50, 50]
    for batch in (100, 75):  # 75: an odd batch, replicated rather than split
        one, two = out[f"1x{batch}"], out[f"2x{batch}"]
        assert (one["on"], two["on"]) == (1, 2)  # the trained weights live on both devices
        for a, b in zip(one["weights"], two["weights"]):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4)
        assert abs(two["valid"] - one["valid"]) < 1e-3
    assert out["too_many"].startswith("train.devices: 3, but JAX sees 2 device(s)")
    assert "xla_force_host_platform_device_count=3" in out["too_many"]


def test_data_parallel_on_tensorflow_is_a_params_error(tmp_path):
    import yaml

    from vaelab.config import ParamsError, load_params
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["devices"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"train\.devices: data-parallel training runs on "
                                          r"the JAX backend only.*got 2"):
        load_params(tmp_path / "params.yaml")


# --------------------------------------------------------------------------------------
# the whole pipeline on JAX, as a user runs it: `dvc exp run -S train.backend=jax`

EXP_TINY = {
    "data": {"valid_size": 100, "test_size": 50},
    "model": {"latent": 5, "hidden": [20]},
    "train": {"epochs": 1, "batch_size": 100},
    "models": {"vae": {"objective": "elbo_analytic", "k": 1},
               "iwae": {"objective": "iwae", "k": 3}},
    "evaluate": {"k": 10, "n_test": 20, "chunk": 10, "snr_k": [1, 3], "snr_repeats": 3,
                 "elbo_draws": 5, "prior_k": [1, 10]},
    "sample": {"n": 4},
}


def test_dvc_exp_run_on_jax_runs_the_whole_pipeline_from_a_fresh_clone(tmp_path):
    """A fresh clone-like copy, first command `dvc exp run -S train.backend=jax`: every
    stage runs on JAX, each MLflow run is tagged with the backend and the device, and the
    exported models say which backend trained them."""
    import sqlite3

    from repo_copy import env_for, make_repo

    repo = make_repo(tmp_path / "repo", EXP_TINY)
    out = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.backend=jax"],
                         cwd=repo, capture_output=True, text=True, env=env_for(), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ran = {line.split("'")[1] for line in out.stdout.splitlines()
           if line.startswith("Running stage '")}
    assert ran == {"check", "prepare", "train@vae", "train@iwae", "evaluate@vae", "evaluate@iwae",
                   "sample@vae", "sample@iwae", "report"}, out.stdout
    assert "Traceback" not in out.stderr
    import yaml

    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["backend"] == "jax"
    for name in EXP_TINY["models"]:
        info = json.loads((repo / "models" / name / "model.json").read_text())
        assert info["train.backend"] == "jax"
    from vaelab import measurements

    ev = {n: measurements.read(repo / "metrics" / "eval" / f"{n}.json").metrics
          for n in EXP_TINY["models"]}
    assert all(np.isfinite(r["nll"]) for r in ev.values())
    with sqlite3.connect(repo / "mlflow.db") as db:
        runs = db.execute("select run_uuid, status from runs").fetchall()
        assert len(runs) == 2 and {s for _, s in runs} == {"FINISHED"}
        for run_id, _ in runs:
            tags = dict(db.execute("select key, value from tags where run_uuid = ?", (run_id,)))
            assert tags["vaelab.backend"] == "jax"
            assert tags["vaelab.device"].startswith("cpu:0"), tags["vaelab.device"]
            params = dict(db.execute("select key, value from params where run_uuid = ?",
                                     (run_id,)))
            assert params["train.backend"] == "jax"
