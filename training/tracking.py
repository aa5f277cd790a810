"""The MLflow run: params, per-epoch metrics, artifacts and tags.

Only the chief worker tracks; elsewhere `Tracker(enabled=False)` does nothing.
Epoch metrics are logged with `step=epoch` and at most once per epoch, so a
resumed run continues the same MLflow run without duplicated or missing epochs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from training.errors import UserError

DEFAULT_URI = "sqlite:///mlflow.db"

# MLflow retries a failed request 7 times with backoff up to 2 minutes, each try waiting up to 120 s: a
# tracking server that dies mid-run would hold a trainer for many minutes. These bound it: a refused
# connection fails after about 15 s (retries after 0, 2, 4 and 8 s, plus jitter), a server that hangs
# after at most about 3 minutes (5 tries of 30 s). Set the variables yourself to change them.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


# The experiment tag that MLflow 3's UI reads to show model training (runs, models, datasets) and not GenAI views.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


class TrackingLost(UserError):
    """The tracking server stopped answering mid-run; the run's checkpoint is kept and the same command resumes it."""


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def check_reachable(uri: str) -> None:
    """Fails fast, before any training, when the tracking store cannot be used."""
    from training.config import tracking_uri_problem

    if problem := tracking_uri_problem(uri):  # tracking.uri is checked with the config; this is $MLFLOW_TRACKING_URI
        raise UserError(f"MLFLOW_TRACKING_URI `{uri.split('://')[0]}://...`: {problem}")
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}")
        except (OSError, urllib.error.URLError) as e:
            raise UserError(
                f"tracking.uri `{uri}`: the MLflow server cannot be reached ({getattr(e, 'reason', e)}); "
                "start it, fix the URI, or set tracking.enabled: false"
            ) from None
    elif uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UserError(f"tracking.uri `{uri}`: folder `{parent}` does not exist or is not writable")


def open_experiment(name: str):
    """The MLflow experiment `name` (made if missing) as the active one, marked as model training for MLflow's UI
    (not a GenAI experiment)."""
    import mlflow

    from mlflow.exceptions import MlflowException

    experiment = mlflow.set_experiment(name)
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
        client = mlflow.MlflowClient()
        try:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        except MlflowException:  # two processes tagging a new experiment at once: the store refuses the second insert
            if client.get_experiment(experiment.experiment_id).tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
                raise
    return experiment


def run_page(uri: str, experiment_id: str, run_id: str) -> str:
    """Where MLflow's UI shows a run: a link for a server, `mlflow ui` and the page for a local store (see
    `Tracker.run_page`)."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}"


def git_commit() -> str:
    """The commit of the reelml source that runs (with `-dirty` if it has local changes)."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=source, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("reelml", "tensorflow", "keras", "mlflow", "numpy", "tensorflow-datasets"):
        try:
            out[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            out[f"version.{name}"] = "not installed"
    return out


class Tracker:
    """One MLflow run, opened new or resumed by id."""

    def __init__(self, cfg, enabled: bool = True, tags: dict | None = None):
        # `tags`: set on the run when it starts, and again when it resumes (a sweep's parent run and trial number).
        self.enabled = enabled and cfg.tracking.enabled
        self.extra_tags = dict(tags or {})
        self.cfg = cfg
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.uri = resolve_uri(cfg.tracking.uri)
        self._logged_epochs: set[int] = set()
        self._logged_finals: set[str] = set()
        self._has_datasets = False
        self._lost = False
        if self.enabled:
            check_reachable(self.uri)
            if self.uri.startswith(("http://", "https://")):
                for name, value in HTTP_LIMITS.items():
                    os.environ.setdefault(name, value)

    @contextlib.contextmanager
    def calls(self):
        """Turns a tracking server that stopped answering into one `TrackingLost` message."""
        if not self.uri.startswith(("http://", "https://")):
            yield
            return
        from mlflow.exceptions import MlflowException, RestException

        try:
            yield
        except RestException:  # the server answered, with an error: not a lost server
            raise
        except (MlflowException, OSError) as e:
            self._lost = True
            first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise TrackingLost(
                f"tracking.uri `{self.uri}`: the MLflow server stopped answering ({first}). The checkpoint is kept: "
                "run the same command again once the server is back, and the run resumes"
            ) from None

    @contextlib.contextmanager
    def run(self, run_id: str | None = None, attempt: str | None = None, on_start=None):
        """Opens (or resumes) the MLflow run; yields its id; ends it as FINISHED, FAILED or KILLED.

        Args:
            run_id: the run to resume; None: a new run, or the one tagged with `attempt`.
            attempt: a token saved in the run folder before the run is created (`reelml.attempt` tag): a
                process killed between creating the run and saving its id finds that run again.
            on_start: called with the run id as soon as the run exists, before anything else is logged
                (with None when tracking is off).
        """
        from training.errors import Stopped

        try:
            yield self._start(run_id, attempt, on_start)
        except BaseException as e:
            if isinstance(e, Stopped) and not self._lost:
                self.set_tags({"reelml.stopped": e.reason[:5000]})
            self.end("KILLED" if isinstance(e, (KeyboardInterrupt, Stopped)) else "FAILED")
            raise
        self.end()

    def _start(self, run_id=None, attempt=None, on_start=None) -> str | None:
        if not self.enabled:
            if on_start is not None:
                on_start(None)
            return None
        import mlflow

        with self.calls():
            mlflow.set_tracking_uri(self.uri)
            experiment = open_experiment(self.cfg.tracking.experiment)
            if run_id is None and attempt:
                found = mlflow.MlflowClient().search_runs(
                    [experiment.experiment_id], f"tags.`reelml.attempt` = '{attempt}'", max_results=1)
                run_id = found[0].info.run_id if found else None
            tags = {"reelml.attempt": attempt} if attempt and run_id is None else {}
            if run_id is None:
                tags.update(self.extra_tags)  # a parent run id is there from the start: MLflow's UI nests the run at once
            run = mlflow.start_run(run_id=run_id, run_name=self.cfg.tracking.run_name or self.cfg.name, tags=tags or None)
            if run_id is not None and self.extra_tags:
                mlflow.set_tags(self.extra_tags)
            self.run_id, self.experiment_id = run.info.run_id, experiment.experiment_id
            if on_start is not None:
                on_start(self.run_id)
            if not run.data.params:  # new, or killed before its params were logged
                mlflow.log_params(self.cfg.flat())
                mlflow.set_tags({"reelml.task": self.cfg.task, "reelml.config_fingerprint": self.cfg.fingerprint(),
                                 "git.commit": git_commit(), **package_versions()})
            if run_id is not None:  # resumed: learn which epochs MLflow already has
                history = mlflow.MlflowClient().get_metric_history(self.run_id, "loss")
                self._logged_epochs = {m.step for m in history}
                # A kill after the final metrics were logged but before the run finished: they are not logged twice.
                self._logged_finals = set(run.data.metrics)  # start_run fetched the run: no second request
                self._has_datasets = bool(run.inputs and run.inputs.dataset_inputs)
        return self.run_id

    def run_page(self) -> str | None:
        """Where the run is in MLflow's UI: a link for a server, `mlflow ui` and the page for a local store.

        `workflowType=machine_learning` opens MLflow 3's model-training view (runs, models, datasets); without it
        the UI opens its GenAI view, whatever the experiment's kind."""
        if not self.enabled or self.run_id is None:
            return None
        return run_page(self.uri, self.experiment_id, self.run_id)

    def set_tags(self, tags: dict):
        if self.enabled:
            import mlflow

            with self.calls():
                mlflow.set_tags(tags)

    def log_epoch(self, epoch: int, logs: dict):
        """Logs one epoch's metrics once: an epoch that MLflow already has is not logged again.

        A set, not a high-water mark: a kill between an epoch's checkpoint and its
        MLflow call leaves a gap that `log_history` fills after later epochs."""
        if not self.enabled or epoch in self._logged_epochs:
            return
        import mlflow

        with self.calls():
            mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)
        self._logged_epochs.add(epoch)

    def log_history(self, history: list[dict]):
        """Logs the epochs of `history` that MLflow does not have yet, in epoch order."""
        for epoch, logs in enumerate(history, start=1):
            self.log_epoch(epoch, logs)

    def log_final(self, metrics: dict):
        """Logs the run's end-of-training metrics (test, report) once, at step 0; a resumed run skips those MLflow has."""
        metrics = {k: float(v) for k, v in metrics.items() if k not in self._logged_finals}
        if self.enabled and metrics:
            import mlflow

            with self.calls():
                mlflow.log_metrics(metrics)
            self._logged_finals.update(metrics)

    def log_datasets(self, cfg, data):
        """The run's training, validation and test data as MLflow dataset inputs (source and fingerprint), once."""
        if not self.enabled or self._has_datasets:
            return
        import mlflow

        from training import mlflow_model

        with self.calls():
            for dataset, context in mlflow_model.datasets(cfg, data):
                mlflow.log_input(dataset, context=context)
        self._has_datasets = True

    def log_model(self, cfg, task, data, export_dir, metrics: dict) -> dict | None:
        """The export as the run's MLflow pyfunc model, registered and maybe promoted (training/mlflow_model.py)."""
        if not self.enabled:
            return None
        from training import mlflow_model

        with self.calls():
            return mlflow_model.log_model(cfg, task, data, export_dir, self.run_id, metrics)

    def log_figure(self, figure, name: str):
        """Logs a matplotlib figure as `plots/<name>` and closes it."""
        import matplotlib.pyplot as plt

        if self.enabled:
            import mlflow

            with self.calls():
                mlflow.log_figure(figure, f"plots/{name}")
        plt.close(figure)

    def log_text(self, text: str, name: str):
        if self.enabled:
            import mlflow

            with self.calls():
                mlflow.log_text(text, name)

    def log_artifacts(self, directory, artifact_path: str):
        if self.enabled:
            import mlflow

            with self.calls():
                mlflow.log_artifacts(str(directory), artifact_path)

    def end(self, status: str = "FINISHED"):
        if self.enabled and self.run_id:
            import mlflow

            if self._lost:  # one quick try, no retries: the run stays RUNNING on the server until it is resumed
                os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
                with contextlib.suppress(Exception):
                    mlflow.end_run(status)
                return
            with self.calls():
                mlflow.end_run(status)


NOT_PLOTTED = ("learning_rate", "train_seconds", "planned_epochs")  # logged per epoch, not learning curves


def learning_curves(history: list[dict]):
    """One panel per metric: training and validation against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in history[0] if not k.startswith("val_") and k not in NOT_PLOTTED]
    names += [k[4:] for k in history[0] if k.startswith("val_") and k[4:] not in names]  # measured on validation only
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    epochs = range(1, len(history) + 1)
    for ax, name in zip(axes[0], names):
        if name in history[0]:
            ax.plot(epochs, [h[name] for h in history], label="train")
        if f"val_{name}" in history[0]:
            ax.plot(epochs, [h[f"val_{name}"] for h in history], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig
