"""Shared fixtures: a scratch working directory per test, generated images and videos."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # exports must load on CPU; test on CPU

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SHARED_DATA = REPO.parent / "shared" / "data"

# The start of a script run with `python -I -c` to load an export where reelml cannot be imported.
WITHOUT_REELML = """
import sys, importlib.abc, json
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('models', 'training', 'reelml'):
            raise ImportError('reelml must not be importable here: ' + name)
sys.meta_path.insert(0, Block())
"""


@pytest.fixture(scope="session")
def sample_frames(tmp_path_factory):
    """The generated sample frames, made once per test session."""
    from training.tasks.frames.sample import ensure_sample_frames

    return ensure_sample_frames(tmp_path_factory.mktemp("sample"), train_per_class=24, test_per_class=6, size=48)


@pytest.fixture(scope="session")
def frames_export(sample_frames, tmp_path_factory):
    """A frames smoke export, trained once, for the tests that only read it (copy it before damaging it)."""
    return train_export(tmp_path_factory.mktemp("frames-export"), "frames.yaml", [f"data.sample_dir={sample_frames.parent}"])


@pytest.fixture(scope="session")
def autoencoder_export(sample_frames, tmp_path_factory):
    """An autoencoder smoke export (frames), trained once, for the tests that only read it."""
    return train_export(tmp_path_factory.mktemp("autoencoder-export"), "autoencoder.yaml",
                        [f"data.sample_dir={sample_frames.parent}"])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Runs the test in an empty working directory (runs/, exports/, mlflow.db land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def smoke_overrides(sample_frames, workdir):
    return [f"data.sample_dir={sample_frames.parent}", f"tracking.uri=sqlite:///{workdir}/mlflow.db"]


def write_jpeg_folders(root: Path, classes=("a", "b", "c"), per_class=6, size=40, seed=0):
    """Class-per-folder JPEGs whose classes differ in colour (learnable in a few steps)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            pixels[..., k % 3] += 150
            (folder / f"{name}{i}.jpg").write_bytes(tf.io.encode_jpeg(pixels).numpy())
    return root


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Runs `reelml ...` in a child process; returns the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "training.cli", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:`port`, its store and artifacts under `root`; returns once healthy."""
    log = open(root / "server.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/server.db", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # Without MLflow's job runner (five huey worker processes for GenAI jobs these tests never start): on two
        # cores their start-up slows the server and every test beside it.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    log.close()
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_mlflow_server(proc)
            raise RuntimeError("mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:])
        time.sleep(0.5)


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
    proc.wait(timeout=60)


def serve_mlflow(root: Path) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on a free port of 127.0.0.1, its store under `root`; returns (process, URI)."""
    for attempt in range(3):  # a free port can be taken by another process before the server binds it
        try:
            proc = start_mlflow_server(root, port := free_port())
            return proc, f"http://127.0.0.1:{port}"
        except RuntimeError:
            if attempt == 2:
                raise


def classify_without_reelml(export_dir: Path, pixels: np.ndarray, scratch: Path) -> np.ndarray:
    """The export's `classify_pixels` probabilities for uint8 `pixels`, from a fresh `python -I` process that
    cannot import reelml."""
    np.save(scratch / "pixels.npy", pixels.astype(np.uint8))
    script = WITHOUT_REELML + f"""import numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(export_dir)!r})
out = loaded.signatures['classify_pixels'](pixels=tf.constant(np.load({str(scratch / 'pixels.npy')!r})))
print(json.dumps(out['probabilities'].numpy().tolist()))
"""
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]))


def train_export(workdir: Path, config: str, overrides=()) -> Path:
    """Trains `configs/smoke/<config>` in `workdir` without tracking; returns its export folder (`exports/<name>/1`)."""
    from training.config import load_config
    from training.train import train

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        result = train(load_config(CONFIGS / "smoke" / config, ["tracking.enabled=false", *overrides]))
    finally:
        os.chdir(cwd)
    return workdir / result.export_dir
