"""Cluster training for real: worker processes on 127.0.0.1, SIGKILL and SIGTERM mid-run.

The workers are started by `scripts/launch_local.py`, the launcher users run, each
worker a `reelml train` process with its own TF_CONFIG.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tensorflow as tf

from training import export as export_lib

from conftest import CONFIGS, REPO

LAUNCHER = REPO / "scripts" / "launch_local.py"
CLI = [sys.executable, "-m", "training.cli"]

# Random layers (dropout, augmentation, denoising noise) draw per replica, so two workers with half a
# batch each cannot draw what one device draws for the whole batch. They are turned off where runs are
# compared; everything else (sharding, gradient and batch-norm all-reduce, loss scaling, metrics) is compared.
NO_RANDOM_LAYERS = {
    "frames": ["model.dropout=0", "model.augment=false"],
    "recommender": ["train.jit_compile=on"],  # the default's XLA, across workers (no CPU collectives inside it)
    "dialogue": ["model.dropout=0"],
    "autoencoder": ["model.noise_stddev=0", "data.random_flip=false", "data.random_shift=0", "data.random_zoom=0"],
}
FAMILIES = [name for name in ("frames", "recommender", "dialogue", "autoencoder") if (CONFIGS / "smoke" / f"{name}.yaml").exists()]
# Two workers sum gradients in another order than one device: float32 round-off, nothing more.
TOLERANCE = {"rel": 2e-3, "abs": 2e-4}


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TF_CONFIG")}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **extra})
    return env


def _data_overrides(family, sample_frames, workdir):
    if family in ("frames", "autoencoder"):
        return [f"data.sample_dir={sample_frames.parent}"]
    if family == "recommender":
        return [f"data.sample_dir={workdir / 'sample'}"]
    return []


def _overrides(family, sample_frames, workdir):
    sets = _data_overrides(family, sample_frames, workdir) + NO_RANDOM_LAYERS.get(family, [])
    return [a for s in sets for a in ("--set", s)]


def _only_run(workdir: Path):
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def _epoch_metrics(client, run):
    """{metric: [value per epoch]} for the per-epoch metrics; asserts one value per epoch."""
    out = {}
    for key in run.data.metrics:
        history = client.get_metric_history(run.info.run_id, key)
        steps = [m.step for m in history]
        if len(history) > 1 or key in ("loss", "val_loss"):
            assert steps == list(range(1, len(steps) + 1)), (key, steps)
            out[key] = [m.value for m in sorted(history, key=lambda m: m.step)]
        else:
            out[key] = [history[0].value]
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_two_workers_train_like_one_with_the_same_global_batch(family, sample_frames, tmp_path):
    config = CONFIGS / "smoke" / f"{family}.yaml"
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    sets = _overrides(family, sample_frames, one)
    single = subprocess.run([*CLI, "train", str(config), *sets], cwd=one, env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    sets = _overrides(family, sample_frames, two)
    cluster = subprocess.run([sys.executable, str(LAUNCHER), "--workers", "2", "--", *CLI, "train", str(config), *sets],
                             cwd=two, env=_env(), capture_output=True, text=True, timeout=600)
    assert cluster.returncode == 0, cluster.stdout[-4000:]

    client_one, run_one = _only_run(one)
    client_two, run_two = _only_run(two)  # only the chief tracks
    assert run_two.data.tags["hardware.replicas"] == "2"
    assert run_two.data.tags["hardware.strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")
    metrics_one, metrics_two = _epoch_metrics(client_one, run_one), _epoch_metrics(client_two, run_two)
    assert set(metrics_one) == set(metrics_two)
    for key, values in metrics_one.items():
        if key.endswith("_seconds"):  # how long the baselines took to fit: a time, not a result
            continue
        assert metrics_two[key] == pytest.approx(values, **TOLERANCE), key

    name = run_two.data.params["name"]
    assert export_lib.versions(two / "exports" / name) == [1]  # only the chief exports
    run_folder = two / "runs" / name
    assert not [p.name for p in run_folder.iterdir() if p.name.startswith(".worker")]  # scratch checkpoints are gone


# --------------------------------------------------------------------------- preemption

KILL_CONFIG = CONFIGS / "smoke" / "frames.yaml"
KILL_SETS = ["train.epochs=6", "train.max_steps_per_epoch=4", "train.steps_per_execution=1"]


def _kill_args(sample_frames):
    # Dropout and augmentation stay on: their RNG state is part of what a resumed run must restore.
    return [a for s in [f"data.sample_dir={sample_frames.parent}", *KILL_SETS] for a in ("--set", s)]


def _start(workdir, sample_frames):
    return subprocess.Popen([*CLI, "train", str(KILL_CONFIG), *_kill_args(sample_frames)], cwd=workdir, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_line(proc, text, timeout=300):
    deadline = time.monotonic() + timeout
    lines = []
    for line in iter(proc.stdout.readline, ""):
        lines.append(line)
        if text in line:
            return lines
        assert time.monotonic() < deadline, "".join(lines[-50:])
    raise AssertionError(f"`{text}` never printed:\n" + "".join(lines[-50:]))


def _wait_for_epoch(proc, epoch):
    """Returns once epoch `epoch` (or a later one) starts, or training is over (a resumed run may be past it)."""
    for line in iter(proc.stdout.readline, ""):
        match = re.match(r"Epoch (\d+)/", line)
        if (match and int(match.group(1)) >= epoch) or line.startswith("test_"):
            return line.strip()
    return "exited"


def _final_weights(workdir, name):
    reader = tf.train.load_checkpoint(str(workdir / "runs" / name / "checkpoints" / "last"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith("model/") and reader.get_variable_to_dtype_map()[k].is_floating}


@pytest.fixture(scope="module")
def uninterrupted(sample_frames, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = subprocess.run([*CLI, "train", str(KILL_CONFIG), *_kill_args(sample_frames)], cwd=workdir, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_sigkill_at_random_steps_then_same_command_finishes_like_an_uninterrupted_run(uninterrupted, sample_frames, tmp_path):
    rng = random.Random(int(os.environ.get("REELML_TEST_SEED", time.time())))
    kills = []
    for epoch in sorted(rng.randint(1, 6) for _ in range(3)):
        proc = _start(tmp_path, sample_frames)
        reached = _wait_for_epoch(proc, epoch)
        delay = rng.uniform(0.0, 0.6)  # an epoch of 4 steps plus validation takes about that
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        kills.append((reached, round(delay, 2)))
        state = tmp_path / "runs" / "frames-smoke" / "state.json"
        if state.exists() and json.loads(state.read_text())["status"] == "finished":
            break  # the run finished before the kill landed: running it again would start a new run
    state = tmp_path / "runs" / "frames-smoke" / "state.json"
    if json.loads(state.read_text())["status"] != "finished":
        final = subprocess.run([*CLI, "train", str(KILL_CONFIG), *_kill_args(sample_frames)], cwd=tmp_path, env=_env(),
                               capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, (kills, final.stderr[-3000:])

    client, run = _only_run(tmp_path)
    assert run.info.status == "FINISHED"
    metrics = _epoch_metrics(client, run)  # one value per epoch and metric, none missing, none twice
    assert len(metrics["loss"]) == 6 and len(metrics["val_accuracy"]) == 6, kills
    assert export_lib.versions(tmp_path / "exports" / "frames-smoke") == [1]

    reference = _final_weights(uninterrupted, "frames-smoke")
    resumed = _final_weights(tmp_path, "frames-smoke")
    assert reference.keys() == resumed.keys() and reference
    for key, value in reference.items():
        np.testing.assert_allclose(resumed[key], value, rtol=1e-4, atol=1e-5, err_msg=f"{key} after kills at {kills}")
    assert metrics["loss"] == pytest.approx(_epoch_metrics(*_only_run(uninterrupted))["loss"], rel=1e-4), kills


def test_sigterm_checkpoints_the_current_step_before_exit_and_the_run_resumes(uninterrupted, sample_frames, tmp_path):
    proc = _start(tmp_path, sample_frames)
    _wait_for_line(proc, "Epoch 3/6")
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert "preempted (SIGTERM)" in out and "run the same command again to resume" in out

    last = tf.train.latest_checkpoint(str(tmp_path / "runs" / "frames-smoke" / "checkpoints" / "last"))
    reader = tf.train.load_checkpoint(last)
    epoch, step = int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")), int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))
    assert (epoch, step) >= (2, 1) and 0 < step < 4, (epoch, step)  # mid-epoch: the steps since epoch 2 are kept
    client, run = _only_run(tmp_path)
    assert run.info.status == "KILLED"

    resumed = subprocess.run([*CLI, "train", str(KILL_CONFIG), *_kill_args(sample_frames)], cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{Path(last).name} (epoch {epoch}, step {step} of the next)" in resumed.stdout
    reference = _final_weights(uninterrupted, "frames-smoke")
    for key, value in _final_weights(tmp_path, "frames-smoke").items():
        np.testing.assert_allclose(value, reference[key], rtol=1e-4, atol=1e-5, err_msg=key)
    metrics = _epoch_metrics(*_only_run(tmp_path))
    assert metrics["loss"] == pytest.approx(_epoch_metrics(*_only_run(uninterrupted))["loss"], rel=1e-4)


def test_slurm_job_step_with_several_tasks_becomes_a_cluster(tmp_path, monkeypatch):
    from training import hardware

    scontrol = tmp_path / "scontrol"  # SLURM expands node lists with `scontrol show hostnames`
    scontrol.write_text("#!/bin/sh\nprintf 'node1\\nnode2\\n'\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for key, value in {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2",
                       "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
                       "SLURM_JOB_NUM_NODES": "2", "CUDA_VISIBLE_DEVICES": ""}.items():
        monkeypatch.setenv(key, value)
    resolver = hardware.cluster_resolver()
    assert resolver.cluster_spec().as_dict() == {"worker": ["node1:8888", "node2:8888"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)


def test_cluster_from_the_config_and_its_rules(tmp_path):
    from training import hardware
    from training.config import load_config
    from training.errors import ConfigError

    cfg = load_config(CONFIGS / "smoke" / "recommender.yaml",
                      ["train.cluster_workers=[host-a:2222, host-b:2222]", "train.worker_index=1"])
    resolver = hardware.cluster_resolver(cfg.train) if "TF_CONFIG" not in os.environ else None
    assert resolver.cluster_spec().as_dict() == {"worker": ["host-a:2222", "host-b:2222"]} and resolver.task_id == 1
    with pytest.raises(ConfigError, match="train.cluster_workers` and `train.worker_index` go together"):
        load_config(CONFIGS / "smoke" / "recommender.yaml", ["train.worker_index=0"])
    with pytest.raises(ConfigError, match="train.worker_index`: got 2: expected less than the 2 entries"):
        load_config(CONFIGS / "smoke" / "recommender.yaml", ["train.cluster_workers=[a:1, b:1]", "train.worker_index=2"])


def test_sigterm_to_two_workers_checkpoints_the_same_step_and_the_cluster_resumes(sample_frames, tmp_path):
    """The launcher passes SIGTERM on, as a scheduler signals every task: the workers agree on one step."""
    command = [sys.executable, str(LAUNCHER), "--workers", "2", "--", *CLI, "train", str(KILL_CONFIG), *_kill_args(sample_frames)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_line(proc, "[worker 0] Epoch 3/6")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, out[-4000:]
    stopped = re.findall(r"\[worker (\d)\] reelml train: preempted \(SIGTERM\) at step (\d+) of epoch (\d+)", out)
    assert sorted(w for w, _, _ in stopped) == ["0", "1"] and len({(s, e) for _, s, e in stopped}) == 1, out[-4000:]

    resumed = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert resumed.stdout.count("of the next)") == 2  # both workers resumed mid-epoch from the chief's checkpoint
    client, run = _only_run(tmp_path)
    assert run.info.status == "FINISHED" and len(_epoch_metrics(client, run)["loss"]) == 6
    assert export_lib.versions(tmp_path / "exports" / "frames-smoke") == [1]


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_and_xla_training_exports_a_float32_model_that_runs_on_cpu(precision, sample_frames, tmp_path):
    """What a GPU job would use (float16 with loss scaling, or bfloat16; XLA), run here on CPU: the loop
    trains with it and the export serves float32 probabilities on CPU (checked in a fresh process)."""
    sets = [f"data.sample_dir={sample_frames.parent}", f"train.mixed_precision={precision}", "train.jit_compile=on",
            "model.augment=false"]  # Keras' random translation and zoom do not compile with XLA
    proc = subprocess.run([*CLI, "train", str(CONFIGS / "smoke" / "frames.yaml"), *[a for s in sets for a in ("--set", s)]],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, run = _only_run(tmp_path)
    assert run.data.tags["hardware.precision"] == precision and np.isfinite(run.data.metrics["loss"])
    check = subprocess.run([sys.executable, "-I", "-c", f"""
import numpy as np, tensorflow as tf
m = tf.saved_model.load({str(tmp_path / 'exports' / 'frames-smoke' / '1')!r})
out = m.signatures['classify_pixels'](pixels=tf.zeros([2, 40, 40, 3], tf.uint8))
p = out['probabilities'].numpy()
assert p.dtype == np.float32 and np.allclose(p.sum(-1), 1, atol=1e-3), p
print('OK', [d.device_type for d in tf.config.list_logical_devices()])
"""], cwd=tmp_path, env=_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and "OK ['CPU']" in check.stdout, check.stderr[-3000:]


def test_xla_on_for_a_model_xla_cannot_compile_is_a_clear_error(sample_frames, tmp_path):
    proc = subprocess.run([*CLI, "train", str(CONFIGS / "smoke" / "frames.yaml"), "--set", f"data.sample_dir={sample_frames.parent}",
                           "--set", "train.jit_compile=on"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "train.jit_compile `on`: XLA cannot compile this model's training pass (no XLA kernel for ImageProjectiveTransformV3)" in proc.stderr
