"""`reelml tune`: the story of a sweep. Space -> study -> parent run -> trials -> best.yaml.

    reelml tune configs/recommender.yaml --space configs/tune/recommender.yaml --trials 30 [--jobs 2]

Each trial is a `reelml train` run of the config with the values Optuna draws from the space file
(`training/tune/space.py`), nested in MLflow under one parent run per study (`parent.py`), judged on the
config's `train.monitor` on validation data and maybe pruned after any epoch (`trial.py`). The study lives
in a journal file in the run folder (or `--storage`: another journal file or an RDB URL), which many
tuners share: other `--jobs`, the tasks of a SLURM array job, or the same command run again after a kill,
which continues the study (`study.py`). The result is `runs/<name>/tune/best.yaml`: a config that trains
the best trial again with `reelml train`, and measures its test metrics, once.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from training.errors import Preempted, UserError

MAX_FAILED_IN_A_ROW = 5


def tune(args, import_tensorflow=lambda: None) -> int:
    """Runs (or continues) a sweep; returns the exit status.

    Args:
        args: the parsed `reelml tune` arguments (config, overrides, space, trials, storage, study, timeout, jobs,
            dry_run).
        import_tensorflow: called once the config and space file are checked, before the first trial.

    Raises:
        UserError: a bad config, space file or storage (before any trial), or a problem every trial has.
    """
    from training.config import load_config
    from training.config.load import given_values
    from training.tune import study as studies
    from training.tune.parent import Parent
    from training.tune.space import load_space
    from training.tune.trial import note, run_trial

    space = load_space(args.space, args.config, args.overrides)  # every key, bound and choice checked: no trial yet
    base = load_config(args.config, args.overrides, values=space.fixed, source=f"{args.config} (with {space.path} fixed:)")
    tune_dir = Path(base.runs_dir) / base.name / "tune"
    where = args.storage or str(tune_dir / "journal.log")
    name = args.study or base.name
    if args.dry_run:
        _print_plan(base, space, where, name, args)
        return 0

    import_tensorflow()
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial, ours
    storage = studies.open_storage(where)
    study, created = studies.open_study(storage, name, base, given_values(args.config, args.overrides), space)
    if created and space.settings.start_from_config:
        own = space.config_values(base.to_dict())
        if own is not None:
            study.enqueue_trial(own, user_attrs={"reelml.config_values": True})
        else:
            print("Note: the config's own values lie outside the space; trial 0 is drawn like the others", flush=True)
    if created:
        for values in space.settings.enqueue:
            study.enqueue_trial(space.encode(values))
    parent = Parent(base, study, created, shlex.join(["reelml", *sys.argv[1:]]), space)
    helpers = _start_helpers(args, where, name, tune_dir) if args.jobs > 1 else []
    deadline = time.monotonic() + args.timeout if args.timeout else None

    interrupted, failed_in_a_row = False, 0
    try:
        with _StopAfterTrial() as stop:
            while not stop.received:
                studies.fail_dead_trials(study, storage)
                if studies.taken(study) >= args.trials or (deadline and time.monotonic() > deadline):
                    break
                trial = study.ask()
                study.sampler = studies.make_sampler(space, (base.seed * 1_000_003 + trial.number) % 2**32, args.trials)
                values = space.suggest(trial)
                if studies.taken(study, below=trial.number) >= args.trials:  # another tuner took the last one
                    studies.give_back(study, trial)
                    break
                print(f"\nTrial {trial.number}: {_describe(values)}", flush=True)
                started = time.monotonic()
                try:
                    outcome = run_trial(trial, values, space, base, args.config, args.overrides, parent)
                except KeyboardInterrupt as e:  # SIGTERM or Ctrl-C: checkpointed; the trial is retried, never lost
                    studies.retry(study, storage, _frozen(study, trial.number), f"interrupted: {e or 'Ctrl-C'}")
                    raise
                except BaseException as e:
                    note(trial, f"error: {e}")
                    study.tell(trial, state=TrialState.FAIL)
                    raise
                note(trial, outcome.note)
                failed_in_a_row = failed_in_a_row + 1 if outcome.state == "FAIL" else 0
                state = TrialState[outcome.state]
                study.tell(trial, outcome.value if state == TrialState.COMPLETE else None, state=state)
                value = f"{base.train.monitor} {outcome.value:.5g}" if outcome.value is not None else outcome.note
                print(f"Trial {trial.number} {outcome.state.lower()} after {outcome.epochs} epochs in "
                      f"{time.monotonic() - started:.0f} s: {value}", flush=True)
                best = _best(study)
                parent.summarize(best, _write_best(args, space, base, study, best, tune_dir))
                if failed_in_a_row >= MAX_FAILED_IN_A_ROW:  # failed trials are not counted: this would never end
                    raise UserError(f"{space.path}: {failed_in_a_row} trials in a row failed, the last: {outcome.note}")
            if stop.received:
                raise Preempted("SIGTERM: stopped between trials")
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        _stop_helpers(helpers, interrupted)
        best = _best(study)
        parent.summarize(best, _write_best(args, space, base, study, best, tune_dir))
        parent.finish(interrupted)
    _print_summary(base, study, best, tune_dir, parent, where)
    if best is None:
        raise UserError(f"study `{name}`: no trial completed ({_counts(study)}); see {tune_dir / 'journal.log'} "
                        "or the trials' runs for why")
    return 0


def _frozen(study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _describe(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _best(study):
    """The best complete trial, or None."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    return study.best_trial


def _counts(study) -> str:
    from training.tune.study import counts

    n = counts(study)
    return ", ".join(f"{n.get(s, 0)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING") if n.get(s))


def best_config(args, space, best):
    """The config that trains the best trial again: the sweep's config, `fixed:` and the trial's values."""
    from training.config import load_config

    decoded = {p.key: p.decode(best.params[p.key]) for p in space.params if p.key in best.params}
    return load_config(args.config, args.overrides, values={**space.fixed, **decoded},
                       source=f"{space.path} (best trial {best.number})")


def _write_best(args, space, base, study, best, tune_dir) -> str | None:
    """Writes `runs/<name>/tune/best.yaml` (atomically) and returns its text; None before any trial completed."""
    if best is None:
        return None
    from training.atomic import write_text

    cfg = best_config(args, space, best)
    default = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("reelml.config_values")
                    and t.value is not None), None)
    against = f" (the config's own values, trial {default.number}: {default.value:.5g})" if default else ""
    header = [
        f"Best trial of the sweep `{study.study_name}`: trial {best.number}, {base.train.monitor} {best.value:.5g}"
        f"{against}; {_counts(study)}.",
        "Found by:",
        f"  {_command(args)}",
        "Train it, measuring its test metrics once:",
        f"  reelml train {tune_dir / 'best.yaml'}",
    ]
    text = "".join(f"# {line}\n" for line in header) + cfg.to_yaml()
    write_text(tune_dir / "best.yaml", text)
    return text


def _command(args) -> str:
    parts = ["reelml", "tune", args.config, "--space", str(args.space), "--trials", str(args.trials)]
    for flag in ("storage", "study", "timeout"):
        if getattr(args, flag):
            parts += [f"--{flag}", str(getattr(args, flag))]
    for override in args.overrides:
        parts += ["--set", override]
    return shlex.join(parts)


class _StopAfterTrial:
    """SIGTERM between trials: stop before the next one (inside a trial, the training loop checkpoints and stops)."""

    def __init__(self):
        self.received = False
        self._previous = None

    def _handle(self, signum, frame):
        self.received = True
        print("SIGTERM received: stopping after this trial", file=sys.stderr, flush=True)

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _start_helpers(args, where, name, tune_dir) -> list:
    """`--jobs J`: J - 1 more tuners of the same study, as processes (TensorFlow's state is per process); their
    output goes to `runs/<name>/tune/worker-<i>.log`."""
    helpers = []
    tune_dir.mkdir(parents=True, exist_ok=True)  # (the study may be stored elsewhere: --storage)
    for i in range(1, args.jobs):
        argv = [sys.executable, "-m", "training.cli", "tune", args.config, "--space", str(args.space),
                "--trials", str(args.trials), "--storage", str(where), "--study", name, "--jobs", "1"]
        if args.timeout:
            argv += ["--timeout", str(args.timeout)]
        for override in args.overrides:
            argv += ["--set", override]
        log = tune_dir / f"worker-{i}.log"
        with open(log, "ab") as out:
            helpers.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        print(f"Tuner {i + 1} of {args.jobs}: process {helpers[-1].pid}, log {log}", flush=True)
    return helpers


def _stop_helpers(helpers, interrupted: bool) -> None:
    for p in helpers:
        if interrupted and p.poll() is None:
            p.send_signal(signal.SIGTERM)  # they checkpoint their trial and leave it to be retried
    for p in helpers:
        status = p.wait()
        if status not in (0, -signal.SIGTERM, 143):
            print(f"Tuner process {p.pid} ended with status {status} (see its log)", file=sys.stderr, flush=True)


def _print_plan(base, space, where, name, args) -> None:
    print(f"Study `{name}` in {where}: {args.trials} trials, objective {base.train.monitor} ({base.train.monitor_mode}) "
          f"on validation; sampler {space.settings.sampler}, pruner {space.settings.pruner}")
    for p in space.params:
        print(f"  {p.key}: {p.describe()}")
    for key, value in space.fixed.items():
        print(f"  {key} = {value!r} (fixed)")


def _print_summary(base, study, best, tune_dir, parent, where) -> None:
    print(f"\nStudy `{study.study_name}` ({where}): {_counts(study)}")
    if best is not None:
        print(f"Best: trial {best.number}, {base.train.monitor} {best.value:.5g}")
        for key, value in best.params.items():
            print(f"  {key}: {value}")
        print(f"Best config: {tune_dir / 'best.yaml'}")
        print(f"  train it and measure test once: reelml train {shlex.quote(str(tune_dir / 'best.yaml'))}")
    if parent.run_id:
        print(f"MLflow parent run: {parent.run_id} in {parent.tracker.uri}")
        print(f"  browse: {parent.page()}")
    sys.stdout.flush()
