"""The Optuna study of a sweep: where it lives, how many trials it has left, and trials whose process died.

A study is shared by every tuner working on it: processes of one `--jobs` command, the tasks of a SLURM
array job, or a re-run of a killed command. The storage is a journal file (the default, one per run folder:
`runs/<name>/tune/journal.log`, on any shared filesystem) or an RDB URL (`sqlite:///...`, `postgresql://...`).

Who does what, with no coordinator:
- `--trials N` is the study's total of finished (complete or pruned) trials. A tuner asks Optuna for a
  trial, and runs it only if fewer than N trials numbered below it are finished or running; otherwise the
  trial is surplus, closed as failed (tagged `reelml.surplus`), and the tuner stops. Optuna numbers trials
  atomically in its storage, so two tuners never run the same trial, and the study never runs more than N.
- A running trial records its process (`host:pid:start time`) and a heartbeat every minute. When a tuner
  finds a trial whose process is gone (same host: no such process; another host: no heartbeat for 10
  minutes), it closes it as failed and enqueues a retry with the same parameters. The retry trains in the
  dead trial's run folder, so it resumes from its last checkpoint, in the same MLflow run; nothing is
  counted twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path

from training.errors import UserError

HEARTBEAT_SECONDS = 60
STALE_SECONDS = 600  # a trial on another host with no heartbeat for this long is taken as dead

PROCESS, HEARTBEAT, RETRY_OF, ENDED, SURPLUS = (
    "reelml.process", "reelml.heartbeat", "reelml.retry_of", "reelml.ended", "reelml.surplus")
IDENTITY, PARENT_RUN = "reelml.identity", "reelml.mlflow_parent_run_id"


def open_storage(where: str | Path):
    """An Optuna storage: an RDB URL (`sqlite:///tune.db`, `postgresql://...`) or a journal file path.

    Raises:
        UserError: the storage cannot be opened, naming it.
    """
    import optuna

    where = str(where)
    try:
        if "://" in where:
            return optuna.storages.RDBStorage(where)
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except Exception as e:  # SQLAlchemy and OS errors: a wrong URL, a missing driver, a folder not writable
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise UserError(f"--storage `{_without_password(where)}`: cannot open the study's storage ({first}); expected "
                        "a journal file path or an RDB URL such as sqlite:///tune.db") from None


def _without_password(url: str) -> str:
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':')[0]}:***@{host}"


def identity(given: dict, space) -> str:
    """What a study was made from: what the config file and `--set` say (not the schema's defaults, which a newer
    reelml may add to) and the space file."""
    return hashlib.sha256((json.dumps(given, sort_keys=True, default=str) + "\n" + space.text).encode()).hexdigest()[:16]


def open_study(storage, name: str, base_cfg, given: dict, space):
    """Creates the study, or loads it when another tuner (or an earlier run of this one) made it.

    Args:
        storage: the Optuna storage.
        name: the study's name.
        base_cfg: the sweep's validated config (its objective).
        given: what the config file and `--set` say (`training.config.load.given_values`): the study's identity.
        space: the `Space`.

    Returns:
        `(study, created)`.

    Raises:
        UserError: the study exists but was made from another config or space file, or for the other direction.
    """
    import optuna

    direction = "minimize" if base_cfg.train.monitor_mode == "min" else "maximize"
    pruner = make_pruner(space)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, pruner=pruner)
        study.set_user_attr(IDENTITY, identity(given, space))
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    if study.direction.name.lower() != direction:
        raise UserError(f"--study `{name}`: the study was made to {study.direction.name.lower()} its objective, and "
                        f"train.monitor_mode `{base_cfg.train.monitor_mode}` asks to {direction}: use another --study")
    made_from = study.user_attrs.get(IDENTITY)
    if made_from is not None and made_from != identity(given, space):
        raise UserError(f"--study `{name}`: the study was made from another config or space file (or other --set "
                        "values): run the same command to continue it, or give this sweep another --study")
    return study, False


def make_pruner(space):
    import optuna

    s = space.settings
    if s.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_epochs)


def make_sampler(space, seed: int, trials: int):
    """A sampler seeded for one trial: each trial draws from its own seed, so tuners never repeat each other."""
    import optuna

    if space.settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # A third of the budget (3 to 10 trials) at random before TPE models the results; a running trial counts
    # as a poor one (constant liar), so parallel tuners spread out instead of drawing the same point.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 3)), constant_liar=True)


# --------------------------------------------------------------------------- processes


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> str:
    """`host:pid:start time`: a process, told apart from a later one that reuses its pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or '-'}"


def _gone(process: str | None, heartbeat: float | None) -> str | None:
    """Why the process of a running trial is gone, or None when it may be alive."""
    if not process:
        return None if heartbeat and time.time() - heartbeat < STALE_SECONDS else "no process recorded"
    host, pid, started = process.rsplit(":", 2)
    if host == socket.gethostname():
        now = _start_time(int(pid)) if Path("/proc").is_dir() else None
        if now is None and Path("/proc").is_dir():
            return f"process {pid} on {host} has ended"
        if now is not None and started != "-" and now != started:
            return f"process {pid} on {host} has ended (the pid is another process now)"
        return None
    if heartbeat is None or time.time() - heartbeat > STALE_SECONDS:
        return f"no heartbeat from process {pid} on {host} for {STALE_SECONDS // 60} minutes"
    return None


class Heartbeat:
    """Marks a running trial as alive every minute, from a daemon thread, while the `with` block lasts."""

    def __init__(self, trial):
        self.trial = trial
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="reelml-tune-heartbeat")

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.trial.set_user_attr(HEARTBEAT, time.time())
            except Exception:  # a storage hiccup; the next beat tries again
                pass

    def __enter__(self):
        self.trial.set_user_attr(PROCESS, this_process())
        self.trial.set_user_attr(HEARTBEAT, time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- counting and retries


def retry(study, storage, trial, reason: str) -> None:
    """Closes `trial` (a FrozenTrial of `study` in `storage`) as failed, noting why, and enqueues a retry with its
    parameters."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    try:
        storage.set_trial_user_attr(trial_id, ENDED, reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:  # another tuner closed it first, and enqueued the retry
        return
    study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.user_attrs.get(RETRY_OF, trial.number)})


def fail_dead_trials(study, storage) -> list[int]:
    """Retries the running trials whose process is gone; returns their numbers."""
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _gone(t.user_attrs.get(PROCESS), t.user_attrs.get(HEARTBEAT))
        if reason:
            retry(study, storage, t, f"killed: {reason}")
            failed.append(t.number)
    return failed


def counts(study) -> dict:
    """Trials by state (surplus ones left out): `{"COMPLETE": 3, "PRUNED": 1, ...}`."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get(SURPLUS):
            out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def taken(study, below: int | None = None) -> int:
    """Finished (complete or pruned) and running trials, of those numbered below `below` (all: None)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states)
               if (below is None or t.number < below) and not t.user_attrs.get(SURPLUS))


def give_back(study, trial) -> None:
    """Closes an asked trial that is one too many (the study has its trials), re-enqueuing a retry it carried."""
    from optuna.trial import TrialState

    trial.set_user_attr(SURPLUS, True)
    study.tell(trial, state=TrialState.FAIL)
    if RETRY_OF in trial.user_attrs:
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.user_attrs[RETRY_OF]})
