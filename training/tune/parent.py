"""The sweep's MLflow parent run: one per study, every trial's run a child of it.

The tuner that creates the study creates the parent run and records its id in the study, so every tuner
of the study (other `--jobs`, array tasks, a re-run after a kill) nests its trials under the same run.
After each trial the parent run gets the best value so far (`best_<monitor>`, one step per finished
trial), the best trial's number, parameters and run as tags, the table of trials (`tune/trials.csv`) and
`tune/best.yaml`; at the end of each tuner, Optuna's plots (optimisation history, intermediate values,
parameter importances, parallel coordinates) as images under `plots/`.
"""

from __future__ import annotations

import io
import time
import warnings

from training import tracking
from training.tune.study import PARENT_RUN, SURPLUS, counts

PLOTS = {
    "optimization_history.png": "plot_optimization_history",
    "intermediate_values.png": "plot_intermediate_values",
    "param_importances.png": "plot_param_importances",
    "parallel_coordinate.png": "plot_parallel_coordinate",
}


class Parent:
    """The parent run of a study, opened (or found) in the config's tracking store; does nothing when tracking is off.

    Args:
        cfg: the sweep's config (with `--set` and `fixed:`).
        study: the Optuna study.
        created: whether this tuner created the study (then it creates the run; others wait for its id).
        command: the tuner's command line, logged as a tag.
        space: the `Space`.
    """

    def __init__(self, cfg, study, created: bool, command: str, space):
        self.cfg, self.study, self.space = cfg, study, space
        self.enabled = cfg.tracking.enabled
        self.tracker = tracking.Tracker(cfg, enabled=self.enabled)  # checks the store is reachable, bounds HTTP retries
        self.run_id = None
        if not self.enabled:
            return
        import mlflow

        with self.tracker.calls():
            mlflow.set_tracking_uri(self.tracker.uri)
            self.experiment_id = tracking.open_experiment(cfg.tracking.experiment).experiment_id
            self.client = mlflow.MlflowClient()
            self.run_id = study.user_attrs.get(PARENT_RUN) or (None if created else self._wait_for_creator())
            if self.run_id is None:
                run = self.client.create_run(self.experiment_id, run_name=f"{cfg.name}-tune", tags={
                    "reelml.task": cfg.task, "reelml.tune.study": study.study_name, "reelml.tune.command": command,
                    "reelml.tune.objective": f"{cfg.train.monitor} ({cfg.train.monitor_mode})",
                    "git.commit": tracking.git_commit(), **tracking.package_versions()})
                self.run_id = run.info.run_id
                study.set_user_attr(PARENT_RUN, self.run_id)
                self.client.log_text(self.run_id, space.text, "tune/space.yaml")
                self.client.log_text(self.run_id, cfg.to_yaml(), "tune/config.yaml")
                for p in space.params:
                    self.client.log_param(self.run_id, f"space.{p.key}", p.describe()[:6000])
            self.client.update_run(self.run_id, status="RUNNING")

    def _wait_for_creator(self, seconds: float = 60.0):
        """The parent run's id once the study's creator has recorded it; None if it never does (it died)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(1.0)
            run_id = self.study.user_attrs.get(PARENT_RUN)  # `user_attrs` reads the storage again
            if run_id:
                return run_id
        return None

    def child_tags(self, trial, values: dict) -> dict:
        """The tags of a trial's run: its parent, study, trial number and parameters."""
        tags = {"reelml.tune.study": self.study.study_name, "reelml.tune.trial": str(trial.number),
                **{f"reelml.tune.params.{k}": str(v)[:5000] for k, v in values.items()}}
        if self.run_id:
            tags["mlflow.parentRunId"] = self.run_id
        return tags

    def summarize(self, best, best_yaml: str | None):
        """The best trial so far, the trial counts and the table of trials."""
        if not self.enabled:
            return
        n = counts(self.study)
        with self.tracker.calls():
            finished = n.get("COMPLETE", 0) + n.get("PRUNED", 0)
            metrics = {f"trials_{state.lower()}": float(count) for state, count in n.items()}
            if best is not None:
                metrics[f"best_{self.cfg.train.monitor}"] = float(best.value)
                tags = {"best.trial": str(best.number), "best.run_id": str(best.user_attrs.get("reelml.run_id", "")),
                        **{f"best.{k}": str(v)[:5000] for k, v in best.params.items()}}
                for key, value in tags.items():
                    self.client.set_tag(self.run_id, key, value)
            for key, value in metrics.items():
                self.client.log_metric(self.run_id, key, value, step=finished)
            self.client.log_text(self.run_id, trials_table(self.study), "tune/trials.csv")
            if best_yaml is not None:
                self.client.log_text(self.run_id, best_yaml, "tune/best.yaml")

    def finish(self, interrupted: bool = False):
        """Optuna's plots; the run ends FINISHED (KILLED if interrupted) unless a trial of another tuner is running."""
        if not self.enabled:
            return
        with self.tracker.calls():
            import matplotlib.pyplot as plt

            for name, figure in plots(self.study).items():
                self.client.log_figure(self.run_id, figure, f"plots/{name}")
                plt.close(figure)
            if not counts(self.study).get("RUNNING"):
                self.client.update_run(self.run_id, status="KILLED" if interrupted else "FINISHED")

    def page(self) -> str | None:
        return tracking.run_page(self.tracker.uri, self.experiment_id, self.run_id) if self.enabled else None


def trials_table(study) -> str:
    """The study's trials as CSV: number, state, value, parameters, duration, MLflow run and why it ended."""
    rows = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]
    keys = list(dict.fromkeys(k for t in rows for k in t.params))
    import csv

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", "value", *keys, "epochs", "seconds", "run_id", "retry_of", "ended"])
    for t in rows:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value, *(t.params.get(k, "") for k in keys),
                         len(t.intermediate_values), f"{seconds:.1f}" if seconds != "" else "",
                         t.user_attrs.get("reelml.run_id", ""), t.user_attrs.get("reelml.retry_of", ""),
                         t.user_attrs.get("reelml.ended", "")])
    return out.getvalue()


def plots(study) -> dict:
    """Optuna's matplotlib plots of the study, by file name; those it cannot draw yet (too few trials) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as optuna_plots

    figures = {}
    for name, function in PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning, and "too few trials" notes
            try:
                axes = getattr(optuna_plots, function)(study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances need two finished trials
                continue
        axes = axes.flat[0] if hasattr(axes, "flat") else axes
        figure = axes.get_figure()
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figures[name] = figure
    return figures
