"""The one device call (issue 20): the pipeline on a GPU as a user runs it, timed side by side
with PyTorch and JAX peers, in one command of at most 8 minutes.

    python3 scripts/gpu_run.py                    on a lent GPU machine (device tool: carry
                                                  [".whl"], or [".whl", ".gpu_state"] to
                                                  continue the full-MNIST rows)
    ALLOW_CPU=1 python3.12 scripts/gpu_run.py     the CPU rehearsal: tiny settings, same steps

Made for a machine with CUDA, Python 3.12, JAX and PyTorch but no TensorFlow, Keras, TFP,
DVC, MLflow or network: `.whl/` (scripts/gpu_wheels.sh) holds the wheels it lacks, the peer
benchmark and the MNIST files. Parts, in this order, each with its own time limit inside one
budget (--budget seconds; a part that would start with under 20 s left is skipped):

  devices     nvidia-smi, jax.devices()
  install     the wheels, offline, into --site (PYTHONPATH), then an import check: keras on
              JAX, TFP's JAX substrate, mlflow, dvc; TensorFlow must stay unimported
  gpucheck    `python -m vaelab.gpucheck --no-bench`: the four default models trained and
              evaluated through the library, per-part seconds (target: under 60 s)
  dvc         `dvc repro` of the default pipeline, train.backend: jax, in a temporary clone
              with the default sqlite MLflow store; checks every run FINISHED, every run's
              `vaelab.device` tag naming the device, reports/report.md written
  bench       `python -m vaelab.bench --backend jax` (IWAE k=50 at batch 100 and 1000, L_5000)
              and the peers (torch, torch-compile, jax at the same shapes, one JSON line each)
  full_mnist  with the time left: the full-MNIST rows (benchmarks/full_mnist.yaml), resumed
              from .gpu_state/ when carried, their checkpoints packed for the next call

Writes docs/gpu/gpu_run_<device>_<date>.json and .log after every part (partial results
survive a cut), and copies them, the report and the full-MNIST state to $OUT when set.
Without a GPU it refuses unless ALLOW_CPU=1, which also shrinks every setting (--tiny).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))  # vaelab.benchmarks (no Keras) for the full-MNIST rows
from repo_copy import env_for, make_repo, merge  # noqa: E402  the tests' clone, not a copy

EXTRA = ROOT / ".whl" / "extra"
STATE = ROOT / ".gpu_state"
MIN_PART_S = 20

# the rehearsal's settings: every step of the device call, in minutes on 2 CPU cores
TINY_DVC = {
    "data": {"valid_size": 200, "test_size": 100},
    "train": {"epochs": 2, "checkpoint_every": 1, "valid_k": 5},
    "models": {"vae": {"objective": "elbo_analytic", "k": 1},
               "vae_mc": {"objective": "elbo_mc", "k": 1},
               "iwae": {"objective": "iwae", "k": 3},
               "prior": {"objective": "prior_mc", "k": 3, "epochs": 1}},
    "evaluate": {"k": 20, "n_test": 40, "chunk": 10, "snr_k": [1, 5], "snr_repeats": 3,
                 "snr_digits": 2, "elbo_draws": 10, "prior_k": [1, 10]},
    "sample": {"n": 4},
}
# Burda et al.'s whole budget for the GPU rows (the CPU rows of the benchmark file stop at 5
# stages, batch 100)
GPU_FULL = {"train": {"schedule_stages": 8, "batch_size": 20}}
TINY_FULL = {"train": {"epochs": 3, "checkpoint_every": 1, "valid_k": 5},
             "models": {"iwae": {"objective": "iwae", "k": 5}},
             "evaluate": {"k": 20, "n_test": 40, "chunk": 10, "snr_k": [1, 5],
                          "snr_repeats": 3, "snr_digits": 2, "elbo_draws": 10,
                          "prior_k": [1, 10]},
             "data": {"valid_size": 1000}}


class Run:
    """The results and the log of this call, written after every part."""

    def __init__(self, args):
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget
        self.out = {"script": "scripts/gpu_run.py", "budget_s": args.budget,
                    "tiny": args.tiny, "started": _now(), "commit": _commit(), "parts": {}}
        self.log_lines: list[str] = []
        self.json_path = self.log_path = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, line: str) -> None:
        stamp = f"[{time.monotonic() - self.t0:6.1f}s] "
        print(stamp + line, flush=True)
        self.log_lines.append(stamp + line)

    def name_files(self, device: str) -> None:
        name = f"gpu_run_{device}_{datetime.date.today().isoformat()}"
        folder = ROOT / "docs" / "gpu"
        folder.mkdir(parents=True, exist_ok=True)
        self.json_path, self.log_path = folder / f"{name}.json", folder / f"{name}.log"

    def save(self) -> None:
        self.out["wall_s"] = round(time.monotonic() - self.t0, 1)
        if self.json_path is None:
            self.name_files("unknown")
        self.json_path.write_text(json.dumps(self.out, indent=2, sort_keys=True) + "\n")
        self.log_path.write_text("\n".join(self.log_lines) + "\n")
        if os.environ.get("OUT"):
            for p in (self.json_path, self.log_path):
                shutil.copy(p, Path(os.environ["OUT"]) / p.name)

    def part(self, name: str, fn, cap: float) -> dict:
        """Run part `name` with at most `cap` seconds (less if the budget is shorter); its
        dict lands in the JSON whatever happens, with status ok, failed, timeout or skipped."""
        limit = min(cap, self.left())
        rec = self.out["parts"].setdefault(name, {})
        if limit < MIN_PART_S:
            rec.update(status="skipped", reason=f"{self.left():.0f} s of the budget left")
            self.say(f"== {name}: skipped ({rec['reason']})")
            self.save()
            return rec
        self.say(f"== {name} (at most {limit:.0f} s)")
        tic = time.monotonic()
        try:
            fn(rec, tic + limit)
            rec.setdefault("status", "ok")
        except PartTimeout as e:
            rec["status"], rec["error"] = "timeout", str(e)
        except Exception as e:  # noqa: BLE001 - one part's failure must not lose the others
            rec["status"], rec["error"] = "failed", f"{type(e).__name__}: {e}"[:500]
        rec["seconds"] = round(time.monotonic() - tic, 1)
        self.say(f"== {name}: {rec['status']} in {rec['seconds']} s"
                 + (f" ({rec['error']})" if "error" in rec else ""))
        self.save()
        return rec


class PartTimeout(Exception):
    def __init__(self, message: str, lines=()):
        super().__init__(message)
        self.lines = list(lines)  # the (seconds, line) pairs printed before the cut


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True, timeout=10).stdout
        return (out.stdout.strip() + ("+changes" if dirty.strip() else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None  # a device copy may travel without .git


def stream(run: Run, cmd: list[str], until: float, env: dict, cwd=ROOT,
           label: str = "") -> tuple[int, list[tuple[float, str]]]:
    """Run `cmd`, logging each output line with its time; at `until` its whole process group
    is stopped (SIGTERM, then SIGKILL), so DVC's stage processes go too, and PartTimeout is
    raised. Returns the exit status and the (seconds, line) pairs."""
    shown = " ".join(cmd)
    run.say(f"$ {shown if len(shown) < 300 else shown[:300] + f' ... ({len(cmd)} arguments)'}")
    tic = time.monotonic()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    lines = []
    while True:
        wait = until - time.monotonic()
        if wait <= 0:
            _stop(p)
            raise PartTimeout(f"{label or cmd[0]} cut at its time limit", lines)
        if sel.select(timeout=min(wait, 1.0)):
            line = p.stdout.readline()
            if not line:
                break
            line = line.rstrip("\n")
            lines.append((time.monotonic() - tic, line))
            run.say(f"  {line}")
    p.wait()
    return p.returncode, lines


def _stop(p: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)
            p.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def slug(name: str) -> str:
    name = re.sub(r"^nvidia\s+", "", name.strip(), flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------------------------------

def part_devices(run: Run, args, env):
    def fn(rec, until):
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=max(1, until - time.monotonic()))
            rec["nvidia_smi"] = out.stdout.strip()
            run.say(f"  nvidia-smi: {rec['nvidia_smi']}")
        # in a process of its own: JAX takes most of the GPU's memory when it starts
        out = subprocess.run([sys.executable, "-c",
                              "import json, jax; print(json.dumps({'jax': jax.__version__, "
                              "'devices': [f'{d.platform}:{d.id} ({d.device_kind})' "
                              "for d in jax.devices()]}))"],
                             capture_output=True, text=True, env=env,
                             timeout=max(1, until - time.monotonic()))
        if out.returncode:
            raise RuntimeError(f"jax.devices() failed: {out.stderr.strip()[-300:]}")
        rec.update(json.loads(out.stdout.strip().splitlines()[-1]))
        run.say(f"  JAX {rec['jax']} sees: {', '.join(rec['devices'])}")
        gpus = [d for d in rec["devices"] if d.startswith(("gpu", "cuda"))]
        rec["gpu"] = bool(gpus)
        kind = gpus[0].split("(", 1)[-1].rstrip(")") if gpus else "cpu"
        rec["device"] = kind
        run.out["device"] = kind
        run.out["python"] = sys.version.split()[0]
        run.name_files(slug(kind) + ("" if gpus else "-rehearsal"))

    return fn


def part_install(run: Run, args, env):
    def fn(rec, until):
        wheels = sorted(glob.glob(str(ROOT / ".whl" / "*.whl")))
        rec["wheels"] = len(wheels)
        if wheels:
            shutil.rmtree(args.site, ignore_errors=True)
            code, _ = stream(run, [sys.executable, "-m", "pip", "install", "-q", "--no-index",
                                   "--no-deps", "--no-compile", "--no-cache-dir",
                                   "--disable-pip-version-check", "--target", args.site,
                                   *wheels], until, env, label="pip install")
            if code:
                raise RuntimeError(f"pip install exited {code}")
            # conflicts between the carried wheels and the machine's own versions: logged
            code, lines = stream(run, [sys.executable, "-m", "pip", "check"], until, env)
            rec["pip_check"] = [line for _, line in lines][:30]
        else:
            run.say("  no wheels in .whl/: using this Python's own packages")
        probe = ("import json, sys, keras, mlflow, dvc, sqlalchemy, alembic, mlxtend\n"
                 "from vaelab import backend\n"
                 "print(json.dumps({**backend.versions(), 'mlflow': mlflow.__version__, "
                 "'dvc': dvc.__version__, 'sqlalchemy': sqlalchemy.__version__, "
                 "'tensorflow_imported': 'tensorflow' in sys.modules}))")
        code, lines = stream(run, [sys.executable, "-c", probe], until, env, label="imports")
        if code:
            raise RuntimeError("the import check failed (log)")
        rec["versions"] = json.loads(lines[-1][1])
        run.out["versions"] = rec["versions"]
        if rec["versions"]["tensorflow_imported"]:
            raise RuntimeError("TensorFlow was imported on the JAX path")

    return fn


def part_gpucheck(run: Run, args, env):
    def fn(rec, until):
        path = Path(tempfile.mkdtemp()) / "gpucheck.json"
        code, _ = stream(run, [sys.executable, "-m", "vaelab.gpucheck", "--no-bench",
                               "--json", str(path), *(["--quick"] if args.tiny else [])],
                         until, env, label="gpucheck")
        if path.exists():  # written once the timed pass is done, even if a later one fails
            got = json.loads(path.read_text())
            rec.update({k: got[k] for k in ("models_seconds", "wall_seconds", "prepare_seconds",
                                            "devices", "models", "tensorflow_imported")
                        if k in got})
        if code:
            raise RuntimeError(f"gpucheck exited {code}")

    return fn


def part_bench(run: Run, args, env):
    def fn(rec, until):
        path = Path(tempfile.mkdtemp()) / "bench.json"
        small = ["--steps", "4", "--repeats", "1", "--eval-k", "100", "--eval-images", "50"]
        failed = None
        try:
            code, _ = stream(run, [sys.executable, "-m", "vaelab.bench", "--backend", "jax",
                                   "--k", "50", "--batch-size", *map(str, args.batches),
                                   *(small if args.tiny else ["--eval-images", "500"]),
                                   "--json", str(path)], until, env, label="vaelab.bench")
            if code or not path.exists():
                failed = f"vaelab.bench exited {code}"
        except PartTimeout as e:
            failed = str(e)
        rec["vaelab"] = json.loads(path.read_text())["results"] if path.exists() else []
        # the peers as a user runs them: the machine's own packages, none of the carried ones
        plain = {**os.environ, "PYTHONUNBUFFERED": "1"}
        peer = EXTRA / "peer_iwae.py"
        if not peer.exists():
            peer = ROOT.parent / "shared" / "bench" / "peer_iwae.py"
        rec["peers"] = []
        for batch in args.batches:
            for fw in ("torch", "torch-compile", "jax"):
                cap = min(until, time.monotonic() + args.peer_cap)
                cmd = [sys.executable, str(peer), fw, "--k", "50", "--batch", str(batch),
                       *(["--steps", "10"] if args.tiny else [])]
                try:
                    code, lines = stream(run, cmd, cap, plain, label=f"peer {fw}")
                except PartTimeout as e:
                    rec["peers"].append({"framework": fw, "batch": batch, "error": str(e)})
                    if time.monotonic() >= until:
                        raise
                    continue
                found = [json.loads(l) for _, l in lines if l.startswith("{")]
                rec["peers"].append(found[-1] if found and not code else
                                    {"framework": fw, "batch": batch,
                                     "error": (lines[-1][1] if lines else f"exit {code}")[:300]})
        rec["ratios"] = ratios(rec)
        for r in rec["ratios"]:
            run.say(f"  batch {r['batch']}: vaelab {r['vaelab']:,.0f} samples/s; " + ", ".join(
                f"{fw} {v:.2f}x" for fw, v in r["vaelab_over"].items()))
        if failed:
            raise RuntimeError(failed)

    return fn


def ratios(rec: dict) -> list[dict]:
    """vaelab's IWAE k=50 samples/s over each peer's, per batch size."""
    out = []
    for row in rec["vaelab"]:
        m = re.fullmatch(r"train iwae k=50 batch=(\d+)", row["what"])
        if not m:
            continue
        batch = int(m.group(1))
        peers = {p["framework"]: p["samples_per_s"] for p in rec["peers"]
                 if p.get("batch") == batch and "samples_per_s" in p}
        out.append({"batch": batch, "vaelab": row["samples_per_s"], "peers": peers,
                    "vaelab_over": {fw: row["samples_per_s"] / v for fw, v in peers.items()}})
    return out


def _dvc_env(args, extra: dict) -> dict:
    """A user's shell: `python` and `dvc` from this interpreter and the carried site, no
    MLflow/DVC variables from outside (repo_copy.env_for), the JAX compilation cache the
    README recommends (one folder for the whole call)."""
    env = env_for(DVC_NO_ANALYTICS="1", **extra)  # no network there to send it
    if os.path.isdir(args.site):
        env["PYTHONPATH"] = args.site  # not ROOT: the clone's own vaelab must be imported
        env["PATH"] = os.path.join(args.site, "bin") + os.pathsep + env["PATH"]
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(),
                                                             "vaelab-jax-cache"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stage_seconds(lines: list[tuple[float, str]], end: float) -> dict:
    """Seconds per stage from the times DVC printed "Running stage '<name>'"."""
    starts = [(t, l.split("'")[1]) for t, l in lines if l.startswith("Running stage '")]
    ends = [t for t, _ in starts[1:]] + [end]
    return {name: round(e - t, 1) for (t, name), e in zip(starts, ends)}


def check_store(repo: Path, device: str) -> dict:
    """What a user sees in MLflow: every run FINISHED, every run's vaelab.device tag."""
    if not (repo / "mlflow.db").is_file():
        return {"runs": [], "all_finished": False, "all_on_device": False}
    with sqlite3.connect(repo / "mlflow.db") as db:
        rows = db.execute("SELECT r.name, r.status, t.value FROM runs r LEFT JOIN tags t "
                          "ON t.run_uuid = r.run_uuid AND t.key = 'vaelab.device'").fetchall()
    runs = [{"name": n, "status": s, "vaelab.device": d} for n, s, d in rows]
    want = "cpu" if device == "cpu" else device
    return {"runs": runs,
            "all_finished": bool(runs) and all(r["status"] == "FINISHED" for r in runs),
            "all_on_device": bool(runs) and all(want in (r["vaelab.device"] or "")
                                                for r in runs)}


def _clonable() -> None:
    """make_repo lists the files to copy with git; a device copy may come without .git."""
    if not (ROOT / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=ROOT, check=True)


def part_dvc(run: Run, args, env):
    def fn(rec, until):
        _clonable()
        repo = make_repo(Path(tempfile.mkdtemp(prefix="vaelab-clone-")) / "repo",
                         merge({"train": {"backend": "jax"}}, TINY_DVC if args.tiny else {}))
        rec["clone"] = str(repo)
        tic = time.monotonic()
        try:
            code, lines = stream(run, [sys.executable, "-m", "dvc", "repro"], until,
                                 _dvc_env(args, {}), cwd=repo, label="dvc repro")
        except PartTimeout as e:
            rec["stages_s"] = stage_seconds(e.lines, time.monotonic() - tic)
            rec.update(check_store(repo, run.out.get("device", "cpu")))
            raise
        rec["end_to_end_s"] = round(time.monotonic() - tic, 1)
        rec["stages_s"] = stage_seconds(lines, rec["end_to_end_s"])
        rec.update(check_store(repo, run.out.get("device", "cpu")))
        report = repo / "reports" / "report.md"
        rec["report_written"] = report.is_file()
        if report.is_file():
            rec["claims"] = [l for l in report.read_text().splitlines()
                             if re.search(r"\b(HOLDS|DOES NOT HOLD|NOT MEASURED)\b", l)][:12]
            if os.environ.get("OUT"):
                shutil.copy(report, Path(os.environ["OUT"]) / f"{run.json_path.stem}_report.md")
        if code or not (rec["all_finished"] and rec["all_on_device"] and rec["report_written"]):
            raise RuntimeError(f"dvc repro exited {code}; all FINISHED {rec['all_finished']}, "
                               f"all on {run.out.get('device')} {rec['all_on_device']}, "
                               f"report {rec['report_written']}")

    return fn


def part_full_mnist(run: Run, args, env):
    """The full-MNIST benchmark (benchmarks/full_mnist.yaml, vaelab.benchmarks) with the GPU's
    rows (--full-mnist-models: IWAE k=50 and the VAE, one and two layers) at Burda et al.'s
    whole budget (GPU_FULL: 8 schedule stages, batch 20), as far as the call's time allows."""
    def fn(rec, until):
        _clonable()
        from vaelab import benchmarks

        bench = benchmarks.select(benchmarks.load(args.full_mnist),
                                  args.full_mnist_models.split(","))
        over = merge(benchmarks.merged(yaml.safe_load((ROOT / "params.yaml").read_text()),
                                       bench), GPU_FULL)
        mnist = EXTRA / "mnist"
        if not mnist.is_dir():
            mnist = ROOT.parent / "shared" / "data" / "mnist"
        if not mnist.is_dir():
            rec.update(status="skipped", reason="no MNIST files (.whl/extra/mnist)")
            return
        over = merge(over, {"data": {"source": "idx", "path": str(mnist)},
                            "train": {"backend": "jax"}})
        if args.tiny:
            over = merge(over, TINY_FULL)
        repo = make_repo(Path(tempfile.mkdtemp(prefix="vaelab-full-")) / "repo", over)
        rec.update(config=args.full_mnist, models=sorted(over["models"]))
        state = STATE / "full_mnist_state.tar.gz"
        if state.exists():  # an earlier call's checkpoints: training resumes from them
            shutil.unpack_archive(state, repo)
            rec["resumed_from"] = sorted(p.name for p in (repo / ".checkpoints").glob("*"))
        tic = time.monotonic()
        lines = []
        try:
            code, lines = stream(run, [sys.executable, "-m", "dvc", "repro"], until,
                                 _dvc_env(args, {}), cwd=repo, label="full-MNIST dvc repro")
        except PartTimeout as e:
            lines = e.lines
            raise
        finally:
            rec["stages_s"] = stage_seconds(lines, time.monotonic() - tic)
            rec["epochs_done"] = _epochs_done(lines)
            packed = _pack_state(repo)
            if packed:
                rec["state"] = {"file": packed.name, "mb": round(packed.stat().st_size / 1e6, 1)}
                if os.environ.get("OUT"):
                    shutil.copy(packed, Path(os.environ["OUT"]) / packed.name)
        records = sorted((repo / "metrics" / "eval").glob("*.json"))
        if records:  # the measurement records of the rows that finished (vaelab.measurements)
            rec["evaluate"] = {r.stem: json.loads(r.read_text())["metrics"] for r in records}
        if code:
            raise RuntimeError(f"dvc repro exited {code}")

    return fn


def _epochs_done(lines: list[tuple[float, str]]) -> dict:
    """The last epoch each model reached, from the train stage's `<name> epoch N/M` lines
    (a cut run writes no curve; its checkpoint holds the last multiple of checkpoint_every)."""
    out = {}
    for _, line in lines:
        m = re.match(r"\s*(\S+) epoch (\d+)/\d+", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def _pack_state(repo: Path) -> Path | None:
    """The clone's .checkpoints/ as one archive: carried back as .gpu_state/ on the next
    call (the checkpoint fingerprints check code and data, not the clone)."""
    if not (repo / ".checkpoints").is_dir():
        return None
    base = Path(tempfile.mkdtemp()) / "full_mnist_state"
    return Path(shutil.make_archive(str(base), "gztar", repo, ".checkpoints"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=470,
                   help="seconds for the whole call (the device call's timeout_s is 540)")
    p.add_argument("--tiny", action="store_true",
                   help="rehearsal settings (implied when no GPU is seen and ALLOW_CPU=1)")
    p.add_argument("--site", default=os.path.join(tempfile.gettempdir(), "vaelab-site"),
                   help="where the carried wheels are installed (put on PYTHONPATH)")
    p.add_argument("--batches", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--peer-cap", type=float, default=60, help="seconds per peer run")
    p.add_argument("--full-mnist", default=str(ROOT / "benchmarks" / "full_mnist.yaml"),
                   help="the full-MNIST benchmark file ('' to skip the rows)")
    p.add_argument("--full-mnist-models", default="iwae,vae_mc,iwae_2l,vae_2l",
                   help="its models the GPU trains (comma-separated)")
    p.add_argument("--scale", type=float, default=None,
                   help="multiply every part's time limit (default: 1 on a GPU, 4 in a "
                        "rehearsal); the budget still bounds the whole")
    p.add_argument("--full-mnist-cap", type=float, default=None,
                   help="seconds for the full-MNIST rows (default: the rest of the budget)")
    p.add_argument("--parts", nargs="*",
                   default=["gpucheck", "dvc", "bench", "full_mnist"],
                   help="which parts to run after devices and install (in this order: "
                        "the pipeline through DVC and MLflow, never run on a GPU, before "
                        "the benchmarks, should the budget run short)")
    args = p.parse_args(argv)
    run = Run(args)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([args.site, str(ROOT)]),
           "PATH": os.path.join(args.site, "bin") + os.pathsep + os.environ.get("PATH", "")}
    dev = run.part("devices", part_devices(run, args, env), 60)
    if not dev.get("gpu"):
        if not os.environ.get("ALLOW_CPU"):
            run.say("no GPU visible to JAX: check the driver and JAX's CUDA wheels "
                    "(ALLOW_CPU=1 rehearses on the CPU)")
            run.save()
            return 1
        run.say("no GPU: a CPU rehearsal with tiny settings (ALLOW_CPU), not a GPU result")
        args.tiny = run.out["tiny"] = True
    run.out["rehearsal"] = not dev.get("gpu")
    # the caps are sized for a GPU machine; a loaded 2-core CPU, tiny settings and all, is slower
    scale = args.scale or (4 if run.out["rehearsal"] else 1)
    args.peer_cap *= scale
    if run.part("install", part_install(run, args, env), 120 * scale).get("status") != "ok":
        run.say("the carried packages did not install or import: nothing else can run")
        return 1
    caps = {"gpucheck": (part_gpucheck, 150), "bench": (part_bench, 200),
            "dvc": (part_dvc, 240),
            "full_mnist": (part_full_mnist, (args.full_mnist_cap or 10**6) / scale)}
    for name in args.parts:
        if name == "full_mnist" and not args.full_mnist:
            continue
        fn, cap = caps[name]
        run.part(name, fn(run, args, env), cap * scale)
    run.out["finished"] = _now()
    run.save()
    bad = [n for n, r in run.out["parts"].items() if r.get("status") not in ("ok", "skipped")]
    run.say(f"done in {run.out['wall_s']} s -> {run.json_path.relative_to(ROOT)}, "
            f"{run.log_path.relative_to(ROOT)}" + (f"; not ok: {', '.join(bad)}" if bad else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
