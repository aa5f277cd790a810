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


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def check_reachable(uri: str) -> None:
    """Fails fast, before any training, when the tracking store cannot be used."""
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

    def __init__(self, cfg, enabled: bool = True):
        self.enabled = enabled and cfg.tracking.enabled
        self.cfg = cfg
        self.run_id: str | None = None
        self.uri = resolve_uri(cfg.tracking.uri)
        self._logged_epochs: set[int] = set()
        self._logged_finals: set[str] = set()
        if self.enabled:
            check_reachable(self.uri)

    @contextlib.contextmanager
    def run(self, run_id: str | None = None):
        """Opens (or resumes) the MLflow run; yields its id; ends it as FINISHED, FAILED or KILLED."""
        run_id = self._start(run_id)
        try:
            yield run_id
        except BaseException as e:
            self.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        self.end()

    def _start(self, run_id: str | None = None) -> str | None:
        if not self.enabled:
            return None
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(self.cfg.tracking.experiment)
        run = mlflow.start_run(run_id=run_id, run_name=self.cfg.tracking.run_name or self.cfg.name)
        self.run_id = run.info.run_id
        if run_id is None:
            mlflow.log_params(self.cfg.flat())
            mlflow.set_tags({"reelml.task": self.cfg.task, "reelml.config_fingerprint": self.cfg.fingerprint(),
                             "git.commit": git_commit(), **package_versions()})
        else:  # resumed: learn which epochs MLflow already has
            history = mlflow.MlflowClient().get_metric_history(self.run_id, "loss")
            self._logged_epochs = {m.step for m in history}
            # A kill after the final metrics were logged but before the run finished: they are not logged twice.
            self._logged_finals = set(run.data.metrics)  # start_run fetched the run: no second request
        return self.run_id

    def set_tags(self, tags: dict):
        if self.enabled:
            import mlflow

            mlflow.set_tags(tags)

    def log_epoch(self, epoch: int, logs: dict):
        """Logs one epoch's metrics once: an epoch that MLflow already has is not logged again.

        A set, not a high-water mark: a kill between an epoch's checkpoint and its
        MLflow call leaves a gap that `log_history` fills after later epochs."""
        if not self.enabled or epoch in self._logged_epochs:
            return
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)
        self._logged_epochs.add(epoch)

    def log_history(self, history: list[dict]):
        for epoch, logs in enumerate(history, start=1):
            self.log_epoch(epoch, logs)

    def log_final(self, metrics: dict):
        """Logs the run's end-of-training metrics (test, report) once, at step 0; a resumed run skips those MLflow has."""
        metrics = {k: float(v) for k, v in metrics.items() if k not in self._logged_finals}
        if self.enabled and metrics:
            import mlflow

            mlflow.log_metrics(metrics)
            self._logged_finals.update(metrics)

    def log_figure(self, figure, name: str):
        """Logs a matplotlib figure as `plots/<name>` and closes it."""
        import matplotlib.pyplot as plt

        if self.enabled:
            import mlflow

            mlflow.log_figure(figure, f"plots/{name}")
        plt.close(figure)

    def log_text(self, text: str, name: str):
        if self.enabled:
            import mlflow

            mlflow.log_text(text, name)

    def log_artifacts(self, directory, artifact_path: str):
        if self.enabled:
            import mlflow

            mlflow.log_artifacts(str(directory), artifact_path)

    def end(self, status: str = "FINISHED"):
        if self.enabled and self.run_id:
            import mlflow

            mlflow.end_run(status)


def learning_curves(history: list[dict]):
    """One panel per metric: training and validation against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in history[0] if not k.startswith("val_") and k != "learning_rate"]
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
