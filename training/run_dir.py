"""The run folder `<runs_dir>/<name>/`: who may write into it, and `state.json`, what it holds.

One process at a time trains, evaluates or exports a run: `RunLock` takes an OS
file lock on `<run>/.lock` (released by the kernel when the process ends, so a
SIGKILL never leaves a stale lock), and a second `reelml train`, `evaluate` or
`export` on the same folder stops at once, naming the process that holds it. On a
cluster only the chief takes it: the other workers write nothing there but their
own scratch folders.

`state.json` records which MLflow run the folder belongs to and whether it
finished. Before an MLflow run is created, the state records an attempt token
that the run is tagged with, so a kill between the two (the run created, its id
not yet saved) resumes that run instead of leaving a second one behind.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

from training.errors import UserError

LOCK_FILE = ".lock"
STATE_FILE = "state.json"


class RunLock:
    """An exclusive, non-blocking lock on a run folder for as long as the `with` block lasts.

    Args:
        run_dir: the run folder (created if missing).
        command: what the holder does (`train`, `evaluate`, `export`), for the message a second process gets.

    Raises:
        UserError: another live process holds the folder.
    """

    def __init__(self, run_dir: Path, command: str):
        self.run_dir, self.command = Path(run_dir), command
        self._fd: int | None = None

    def __enter__(self):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # flock: per open file, released when the process dies; NFS clients emulate it with POSIX locks.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(
                f"{self.run_dir}: in use by {holder}; one process at a time trains, evaluates or exports a run. "
                "Wait for it to end (or stop it), or give this run another `name`"
            ) from None
        os.ftruncate(fd, 0)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} (`reelml {self.command}` since {started})".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _holder(fd: int, wait_s: float = 2.0) -> str:
    """Who holds the lock, as its holder wrote it just after taking it.

    The holder writes its line a moment after `flock` succeeds, so a process that
    loses a race started at the same instant can find the file still empty: it
    waits for the line (a short while), then falls back to "another process".
    """
    deadline = time.monotonic() + wait_s
    while True:
        text = os.pread(fd, 1000, 0).decode(errors="replace").strip()
        if text.endswith(")") or time.monotonic() > deadline:
            return text or "another process"
        time.sleep(0.02)


def read_state(run_dir: Path) -> dict | None:
    """The run folder's `state.json`, or None when there is none.

    Raises:
        UserError: the file is damaged (truncated, not JSON, missing fields).
    """
    path = Path(run_dir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: damaged run state ({e}); pass --fresh to start the run over "
                        "(its checkpoints are discarded), or delete the file") from None
    if not isinstance(state, dict) or state.get("status") not in ("starting", "running", "finished"):
        raise UserError(f"{path}: damaged run state (expected a JSON object with a `status` of starting, running or "
                        "finished); pass --fresh to start the run over, or delete the file")
    return state


def _changed_keys(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


class RunState:
    """`state.json` of a run folder: which MLflow run it is and whether it finished.

    Args:
        run_dir: the run folder.
        cfg: the resolved config of this command.
        fresh: start over even if an unfinished run is there (`--fresh`).
        chief: whether this process owns the folder (clears a finished run's checkpoints).
    """

    def __init__(self, run_dir: Path, cfg, fresh: bool, chief: bool = True):
        self.path = Path(run_dir) / STATE_FILE
        previous = None if fresh else read_state(run_dir)
        self.cfg = cfg
        self.resumed = bool(previous) and previous["status"] in ("starting", "running")
        if self.resumed:
            changed = _changed_keys(previous.get("config") or {}, cfg.flat())
            # Another fingerprint with no value changed: a newer reelml added keys, unset (None) in both.
            if previous.get("fingerprint") != cfg.fingerprint() and changed:
                raise UserError(
                    f"{run_dir} holds an unfinished run of `{cfg.name}` with a different config "
                    f"(changed: {', '.join(changed[:5])}). Re-run with the same config to resume it, "
                    "or pass --fresh to start over"
                )
            self.run_id = previous.get("run_id")
            self.attempt = previous.get("attempt")
        else:
            if chief and (self.path.exists() or fresh):  # a finished (or abandoned) run makes way for the new one
                shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
            self.run_id = None
            self.attempt = None
        if self.attempt is None:
            self.attempt = uuid.uuid4().hex

    def save(self, status: str, export_dir: Path | None = None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"status": status, "run_id": self.run_id, "attempt": self.attempt, "fingerprint": self.cfg.fingerprint(),
                 "config": self.cfg.flat(), "export": str(export_dir) if export_dir else None}
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.path)
