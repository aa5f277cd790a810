"""The run folder holds: one writer at a time, checkpoints that must fit, state and exports that survive kills."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tensorflow as tf

from training import export as export_lib
from training.config import load_config
from training.errors import UserError
from training.train import train

from conftest import CONFIGS, REPO, free_port, run_cli, smoke_overrides, start_mlflow_server, stop_mlflow_server

SMOKE = CONFIGS / "smoke" / "frames.yaml"
CLI = [sys.executable, "-m", "training.cli"]


def _sets(*overrides):
    return [a for s in overrides for a in ("--set", s)]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TF_CONFIG")}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)})
    return env


def _popen(workdir, *args):
    return subprocess.Popen([*CLI, *map(str, args)], cwd=workdir, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for_line(proc, text):
    lines = []
    for line in iter(proc.stdout.readline, ""):
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"`{text}` never printed:\n" + "".join(lines[-40:]))


def _runs(uri):
    client = mlflow.MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _user_error(result, *expected):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, result.stderr[-3000:]


# --------------------------------------------------------------------------- one writer per run folder


def test_a_second_process_on_a_live_run_folder_exits_2_and_a_sigkill_leaves_no_lock(sample_frames, workdir):
    sets = _sets(*smoke_overrides(sample_frames, workdir), "train.epochs=400")
    # Two trainers started together: one trains, the other stops at once naming the folder and the holder.
    first, second = _popen(workdir, "train", SMOKE, *sets), _popen(workdir, "train", SMOKE, *sets)
    procs = {first.pid: first, second.pid: second}
    pid, status = os.wait()  # the loser ends long before the winner's 400 epochs
    loser = procs.pop(pid)
    winner = next(iter(procs.values()))
    out = loser.stdout.read()
    loser.stdout.close()
    assert os.waitstatus_to_exitcode(status) == 2, out[-3000:]
    assert "Traceback" not in out
    assert f"runs/frames-smoke: in use by process {winner.pid} on {socket.gethostname()} (`reelml train`" in out, out
    _wait_for_line(winner, "Epoch 2/")
    try:
        for command in ("train", "evaluate", "export"):
            _user_error(run_cli(command, SMOKE, *sets, cwd=workdir), "runs/frames-smoke: in use by process", "`reelml train`")
        assert len(_runs(f"sqlite:///{workdir}/mlflow.db")) == 1
        assert not (workdir / "exports").exists()
    finally:
        winner.kill()
        winner.wait()
        winner.stdout.close()
    # The kernel dropped the lock with the process: the folder is free again.
    result = run_cli("evaluate", SMOKE, *sets, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]


# --------------------------------------------------------------------------- checkpoints that must fit


@pytest.fixture(scope="module")
def trained_once(sample_frames, tmp_path_factory):
    """A finished 3-epoch frames smoke run (3 checkpoints, export version 1), trained once for the module."""
    base = tmp_path_factory.mktemp("trained")
    sets = _sets(*smoke_overrides(sample_frames, base), "train.epochs=3", "train.keep_checkpoints=3")
    result = run_cli("train", SMOKE, *sets, cwd=base)
    assert result.returncode == 0, result.stderr[-3000:]
    return base, sets


@pytest.fixture
def trained(trained_once, workdir):
    """That run's folder and export, copied into this test's working directory (the tests damage them); its
    MLflow store stays where it was trained (these tests read the run folder, not MLflow)."""
    base, sets = trained_once
    for name in ("runs", "exports"):
        shutil.copytree(base / name, workdir / name, symlinks=True)
    return sets


@pytest.mark.parametrize("command", ["evaluate", "export", "train"])
def test_a_checkpoint_of_another_architecture_is_an_error_naming_the_variable_and_key(command, trained, workdir):
    if command == "train":  # a resumed run: the checkpoint of an unfinished run under a config of another shape
        state = workdir / "runs" / "frames-smoke" / "state.json"
        saved = json.loads(state.read_text())
        cfg = load_config(SMOKE, [s for s in trained if s != "--set"] + ["model.filters=[4,16]"])
        state.write_text(json.dumps({**saved, "status": "running", "fingerprint": cfg.fingerprint(), "config": {
            **saved["config"], "model.filters": [4, 16]}}))
        # (as if the run had been started with these filters and its checkpoints came from elsewhere)
    result = run_cli(command, SMOKE, *trained, "--set", "model.filters=[4,16]", cwd=workdir)
    _user_error(result, "holds a different model than the config builds", "incompatible tensor with shape")
    if command != "train":
        assert "model.filters: [4, 8] in the run, [4, 16] now" in result.stderr, result.stderr
    assert export_lib.versions(workdir / "exports" / "frames-smoke") == [1]  # nothing exported from untrained weights


def _checkpoint_files(workdir):
    last = workdir / "runs" / "frames-smoke" / "checkpoints" / "last"
    return sorted(last.glob("ckpt-*.data-*"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(trained, workdir):
    files = _checkpoint_files(workdir)
    assert len(files) == 3
    _truncate(files[-1])
    result = run_cli("evaluate", SMOKE, *trained, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{files[-1].name.split('.data-')[0]} is damaged" in result.stdout, result.stdout
    assert "(epoch 2)" in result.stdout, result.stdout  # the one before the damaged epoch 3


def test_export_with_every_checkpoint_damaged_exits_2_and_writes_nothing(trained, workdir):
    for path in _checkpoint_files(workdir):
        _truncate(path)
    result = run_cli("export", SMOKE, *trained, cwd=workdir)
    _user_error(result, "no readable checkpoint")
    assert export_lib.versions(workdir / "exports" / "frames-smoke") == [1]


DAMAGED_STATES = ['{"status": "runn', "", "[1, 2]", '{"status": "paused"}']


@pytest.mark.parametrize("content", DAMAGED_STATES)
def test_a_damaged_state_file_is_a_clear_error_and_fresh_starts_over(content, sample_frames, workdir):
    sets = _sets(*smoke_overrides(sample_frames, workdir))
    state = workdir / "runs" / "frames-smoke" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(content)
    _user_error(run_cli("train", SMOKE, *sets, cwd=workdir), "state.json: damaged run state", "--fresh")
    if content != DAMAGED_STATES[0]:
        return  # what --fresh does is the same for every kind of damage: trained once, for the first
    result = run_cli("train", SMOKE, *sets, "--fresh", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(state.read_text())["status"] == "finished"


# --------------------------------------------------------------------------- evaluate and export build as train does


def test_export_of_a_bfloat16_run_computes_as_the_trained_export(sample_frames, workdir):
    sets = _sets(*smoke_overrides(sample_frames, workdir), "train.mixed_precision=mixed_bfloat16")
    assert run_cli("train", SMOKE, *sets, cwd=workdir).returncode == 0
    result = run_cli("export", SMOKE, *sets, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    root = workdir / "exports" / "frames-smoke"
    assert export_lib.versions(root) == [1, 2]
    pixels = tf.constant(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)), tf.uint8)
    trained, again = (tf.saved_model.load(str(root / v)).signatures["classify_pixels"](pixels=pixels)["probabilities"]
                      for v in ("1", "2"))
    np.testing.assert_allclose(again.numpy(), trained.numpy(), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- resume order


def test_a_resumed_run_logs_what_mlflow_missed_before_training_on(sample_frames, workdir, monkeypatch):
    from training import tracking

    cfg = load_config(SMOKE, smoke_overrides(sample_frames, workdir) + ["train.epochs=4"])
    real_log_epoch = tracking.Tracker.log_epoch

    def killed_before_logging_epoch_2(self, epoch, logs):
        if epoch == 2:  # epoch 2 is checkpointed, not yet in MLflow
            raise KeyboardInterrupt("simulated kill")
        real_log_epoch(self, epoch, logs)

    monkeypatch.setattr(tracking.Tracker, "log_epoch", killed_before_logging_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(tracking.Tracker, "log_epoch", real_log_epoch)
    result = train(cfg)
    history = mlflow.MlflowClient(result.tracking_uri).get_metric_history(result.run_id, "loss")
    by_time = [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))]
    assert [m.step for m in history] == [1, 2, 3, 4] and by_time == [1, 2, 3, 4]


def test_a_kill_between_creating_the_mlflow_run_and_saving_its_id_resumes_that_run(sample_frames, workdir, monkeypatch):
    from training import run_dir

    cfg = load_config(SMOKE, smoke_overrides(sample_frames, workdir))
    real_save = run_dir.RunState.save

    def killed_before_saving_the_run_id(self, status, export_dir=None):
        if status == "running":
            raise KeyboardInterrupt("simulated kill")
        real_save(self, status, export_dir)

    monkeypatch.setattr(run_dir.RunState, "save", killed_before_saving_the_run_id)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(run_dir.RunState, "save", real_save)
    result = train(cfg)
    runs = _runs(result.tracking_uri)
    assert [r.info.run_id for r in runs] == [result.run_id] and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["name"] == "frames-smoke"


# --------------------------------------------------------------------------- exports killed mid-write


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_export_temp_folders_of_dead_writers_are_removed(sample_frames, workdir):
    root = workdir / "exports" / "frames-smoke"
    host = socket.gethostname()
    dead = [root / f".tmp-{_dead_pid()}@{host}-0123abcd", root / f".tmp-{_dead_pid()}@{host}-0123abcd-verify"]
    alive = [root / f".tmp-{os.getpid()}@{host}-89abcdef", root / ".tmp-1@another-host-89abcdef"]
    for path in dead + alive:
        (path / "variables").mkdir(parents=True)
    train(load_config(SMOKE, smoke_overrides(sample_frames, workdir)))
    assert sorted(p.name for p in root.iterdir()) == sorted(["1", *(p.name for p in alive)])


def _children(pid):
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(proc.name))
    return found


def _alive(pid):
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the export check's process")
def test_the_export_check_dies_with_a_killed_exporter_and_its_folders_are_cleared(trained, workdir):
    root = workdir / "exports" / "frames-smoke"
    for _ in range(5):  # the check can finish before it is seen: try again
        proc = _popen(workdir, "export", SMOKE, *trained)
        checker = None
        while proc.poll() is None and checker is None:
            if any(root.glob(".tmp-*-verify")):
                checker = next(iter(_children(proc.pid)), None)
            time.sleep(0.02)
        if checker is None:
            proc.wait()
            proc.stdout.close()
            continue
        proc.kill()
        proc.wait()
        proc.stdout.close()
        deadline = time.monotonic() + 120
        while _alive(checker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(checker), "the export check outlived the exporter"
        assert any(root.glob(".tmp-*"))
        break
    else:
        pytest.fail("never caught the export check running")
    result = run_cli("export", SMOKE, *trained, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------- a tracking server that dies mid-run


@pytest.mark.slow
def test_a_tracking_server_dying_mid_run_stops_the_trainer_and_the_run_resumes(sample_frames, workdir):
    port = free_port()
    server = start_mlflow_server(workdir, port)
    uri = f"http://127.0.0.1:{port}"
    sets = _sets(smoke_overrides(sample_frames, workdir)[0], f"tracking.uri={uri}", "train.epochs=60")
    proc = _popen(workdir, "train", SMOKE, *sets)
    try:
        _wait_for_line(proc, "Epoch 3/")
    finally:
        stop_mlflow_server(server)
    out, _ = proc.communicate(timeout=300)  # bounded by the HTTP limits (about 15 s for a refused connection)
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    assert f"tracking.uri `{uri}`: the MLflow server stopped answering" in out, out[-3000:]
    assert "run the same command again once the server is back" in out

    server = start_mlflow_server(workdir, port)
    try:
        resumed = run_cli("train", SMOKE, *sets, cwd=workdir)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "Resuming from" in resumed.stdout
        client = mlflow.MlflowClient(uri)
        (run,) = _runs(uri)
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 61))
    finally:
        stop_mlflow_server(server)


@pytest.mark.parametrize("holder", ["train", "evaluate"])
def test_run_lock_in_process(holder, tmp_path):
    from training.run_dir import RunLock

    with RunLock(tmp_path / "run", holder):
        with pytest.raises(UserError, match=rf"in use by process {os.getpid()} .*`reelml {holder}`"):
            with RunLock(tmp_path / "run", "export"):
                pass
    with RunLock(tmp_path / "run", "export"):  # released on exit
        pass


def test_a_process_that_loses_the_lock_by_an_instant_still_names_the_holder(tmp_path):
    """The holder writes its line just after `flock` succeeds: a loser that reads the file in between waits for it."""
    import fcntl
    import threading

    from training.run_dir import LOCK_FILE, RunLock

    (tmp_path / "run").mkdir()
    fd = os.open(tmp_path / "run" / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, its line not written yet
    late = threading.Timer(0.3, os.write, (fd, b"process 4242 on host (`reelml train` since now)"))
    late.start()
    try:
        with pytest.raises(UserError, match=r"in use by process 4242 on host \(`reelml train` since now\)"):
            with RunLock(tmp_path / "run", "export"):
                pass
    finally:
        late.join()
        os.close(fd)


def test_a_tracking_uri_from_the_environment_with_a_bad_scheme_exits_2(sample_frames, workdir):
    result = run_cli("train", SMOKE, "--set", f"data.sample_dir={sample_frames.parent}", cwd=workdir,
                     env={"MLFLOW_TRACKING_URI": "ftp://user:secret@host/x"})
    _user_error(result, "MLFLOW_TRACKING_URI `ftp://...`", "scheme `ftp:`")
    assert "secret" not in result.stderr


def test_an_unfinished_run_of_an_older_reelml_resumes_when_no_value_changed(tmp_path):
    from training.run_dir import RunState

    cfg = load_config(SMOKE)
    first = RunState(tmp_path, cfg, fresh=False)
    first.run_id = "abc"
    first.save("running")
    state = json.loads((tmp_path / "state.json").read_text())
    state["fingerprint"] = "of-an-older-version"  # its schema had no `train.max_minutes` (unset here too)
    del state["config"]["train.max_minutes"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    resumed = RunState(tmp_path, cfg, fresh=False)
    assert resumed.resumed and resumed.run_id == "abc"

    state["config"]["train.epochs"] = 99  # a value that did change still refuses to resume silently
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match=r"changed: train.epochs: 99 -> 2"):
        RunState(tmp_path, cfg, fresh=False)
