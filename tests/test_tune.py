"""`reelml tune`: the space file's checks, a sweep's MLflow runs, pruning, best.yaml, shared and resumed studies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CONFIGS, serve_mlflow, stop_mlflow_server
from training.cli import main

RECOMMENDER = str(CONFIGS / "smoke" / "recommender.yaml")
NEUMF = str(CONFIGS / "smoke" / "recommender_neumf.yaml")  # its tower is a swept key; its own lr 1e-3, monitor HR@10


def write_space(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def tune(*args) -> int:
    return main(["tune", *map(str, args)])


def store(workdir) -> str:
    # An absolute URI: MLflow keeps one store per URI string in a process, so a relative one would stay in the
    # first test's folder.
    return f"sqlite:///{workdir}/mlflow.db"


# --------------------------------------------------------------------------- the space file, before any trial

BAD_SPACES = {
    "unknown key": ("params:\n  model.factorz: {low: 4, high: 8}\n", "params `model.factorz`: key `model.factorz` does not exist"),
    "bound the schema refuses": ("params:\n  train.learning_rate: {low: 1.0e-3, high: 20.0}\n",
                                 "params `train.learning_rate` high=20.0: key `train.learning_rate`: got 20.0"),
    "choice the schema refuses": ("params:\n  model.name: [gmf, nope]\n", "params `model.name` choice 'nope'"),
    "range on a key of words": ("params:\n  model.name: {low: 1, high: 3}\n", "needs a number key; `model.name` takes one of"),
    "float bounds on an int key": ("params:\n  model.factors: {low: 4.5, high: 8}\n", "`model.factors` is an integer key"),
    "low above high": ("params:\n  model.factors: {low: 8, high: 4}\n", "low 8 must be below high 4"),
    "log from zero": ("params:\n  train.learning_rate: {low: 0.0, high: 0.1, log: true}\n", "a log range needs low > 0"),
    "step that misses high": ("params:\n  model.factors: {low: 4, high: 9, step: 2}\n", "must be a multiple of step 2"),
    "a section": ("params:\n  train: [1, 2]\n", "`train` is a section"),
    "the objective": ("params:\n  train.monitor: [val_loss, val_hr_at_10]\n", "params `train.monitor`: the sweep sets this key"),
    "a bad fixed value": ("params:\n  model.factors: {low: 4, high: 8}\nfixed:\n  train.epochs: 0\n",
                          "(fixed): key `train.epochs`: got 0"),
    "unknown space key": ("params:\n  model.factors: {low: 4, high: 8}\nprune: none\n", "key `prune` does not exist"),
    "no params": ("fixed:\n  train.epochs: 2\n", "key `params` is required"),
    "a test objective": ("params:\n  model.factors: {low: 4, high: 8}\nfixed:\n  train.monitor: test_loss\n",
                         "a sweep chooses on a validation metric"),
    "enqueue outside the space": ("params:\n  model.factors: {low: 4, high: 8}\nenqueue:\n  - {model.factors: 64}\n",
                                  "enqueue[0]: `model.factors`: 64 is outside its space"),
}


@pytest.mark.parametrize("case", BAD_SPACES)
def test_a_bad_space_file_is_exit_2_naming_the_key_before_any_trial(case, workdir, capsys):
    text, expected = BAD_SPACES[case]
    space = write_space(workdir / "space.yaml", text)
    assert tune(RECOMMENDER, "--space", space, "--trials", 2) == 2
    err = capsys.readouterr().err
    assert err.startswith("reelml tune: error: ") and str(space) in err and expected in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "runs").exists() and not (workdir / "mlflow.db").exists()  # nothing ran, nothing written


def test_bad_tune_flags_are_exit_2(workdir, capsys):
    space = write_space(workdir / "space.yaml", "params:\n  model.factors: {low: 4, high: 8}\n")
    for flags in (["--trials", "0"], ["--trials", "x"], ["--timeout", "-1"], ["--jobs", "0"]):
        with pytest.raises(SystemExit) as e:
            tune(RECOMMENDER, "--space", space, *flags)
        assert e.value.code == 2
        assert f"argument {flags[0]}: expected a positive" in capsys.readouterr().err
    assert tune(RECOMMENDER, "--space", workdir / "missing.yaml") == 2
    assert "missing.yaml: space file not found" in capsys.readouterr().err


def test_a_sweep_whose_every_trial_is_refused_stops_with_exit_2(workdir, capsys):
    # Each value alone is valid for a GMF config; together (NeuMF with an odd first MLP layer) the schema refuses
    # them, so every trial fails at once: failed trials are not counted, and the sweep must not go on forever.
    space = write_space(workdir / "space.yaml", "params:\n  model.name: [neumf]\n  model.mlp_layers: [[15, 8]]\n")
    gmf = CONFIGS / "smoke" / "recommender_gmf.yaml"
    assert tune(gmf, "--space", space, "--trials", 3, "--set", f"tracking.uri={store(workdir)}") == 2
    err = capsys.readouterr().err
    assert "5 trials in a row failed, the last: config refused" in err and "expected an even number" in err, err
    trials = _study(workdir, "recommender-gmf-smoke").get_trials()
    assert [t.state.name for t in trials] == ["FAIL"] * 5
    assert not (workdir / "runs" / "recommender-gmf-smoke" / "tune" / "trials").exists()  # nothing trained


# --------------------------------------------------------------------------- a sweep in MLflow


def _runs(uri):
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def _study(workdir, name="recommender-smoke", storage=None):
    import optuna

    storage = storage or optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(workdir / "runs" / name / "tune" / "journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


@pytest.mark.slow
def test_a_sweep_of_4_trials_writes_a_parent_and_4_child_runs_and_best_yaml_reproduces_its_trial(workdir, capsys):
    from training.config import load_config
    from training.train import train

    space = write_space(workdir / "space.yaml", """\
params:
  train.learning_rate: {low: 1.0e-3, high: 3.0e-2, log: true}
  model.factors: {low: 4, high: 12, step: 4}
  model.mlp_layers: [[16, 8], [8, 4]]
fixed:
  train.epochs: 3
pruner: none
""")
    assert tune(NEUMF, "--space", space, "--trials", 4, "--set", f"tracking.uri={store(workdir)}") == 0
    out = capsys.readouterr().out
    study = _study(workdir, "recommender-neumf-smoke")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert trials[0].params == {"train.learning_rate": 1e-3, "model.factors": 4, "model.mlp_layers": "[16, 8]"}  # the config's own
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4

    client, parents, children = _runs(store(workdir))
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "recommender-neumf-smoke-tune"
    by_trial = {int(r.data.tags["reelml.tune.trial"]): r for r in children}
    assert sorted(by_trial) == [0, 1, 2, 3]
    for t in trials:
        run = by_trial[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert run.data.tags["reelml.tune.study"] == "recommender-neumf-smoke"
        assert run.data.tags["reelml.tune.params.train.learning_rate"] == str(t.params["train.learning_rate"])
        assert run.data.tags["reelml.tune.params.model.mlp_layers"] == str(json.loads(t.params["model.mlp_layers"]))
        assert run.data.params["train.learning_rate"] == str(t.params["train.learning_rate"])  # a normal run's params
        assert not any(k.startswith("test_") for k in run.data.metrics)  # trials leave test unseen
        history = client.get_metric_history(run.info.run_id, "val_hr_at_10")
        assert max(m.value for m in history) == pytest.approx(t.value)  # the objective: the best epoch's validation metric
        assert t.user_attrs["reelml.run_id"] == run.info.run_id
    best = study.best_trial
    assert parent.data.metrics["best_val_hr_at_10"] == pytest.approx(best.value)
    assert parent.data.tags["best.trial"] == str(best.number)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png", "plots/param_importances.png",
            "plots/intermediate_values.png"} <= artifacts
    table = Path(client.download_artifacts(parent.info.run_id, "tune/trials.csv", str(workdir))).read_text().splitlines()
    assert len(table) == 5 and table[0].startswith("number,state,value,train.learning_rate")

    best_yaml = workdir / "runs" / "recommender-neumf-smoke" / "tune" / "best.yaml"
    assert f"reelml train {best_yaml.relative_to(workdir)}" in out
    cfg = load_config(best_yaml)
    assert cfg.name == "recommender-neumf-smoke" and cfg.export.enabled and cfg.train.epochs == 3
    assert cfg.train.learning_rate == best.params["train.learning_rate"]
    assert cfg.model.mlp_layers == json.loads(best.params["model.mlp_layers"])
    result = train(cfg)  # the best trial again, as a user runs it: its metric, and now its test metrics
    assert max(h["val_hr_at_10"] for h in result.history) == pytest.approx(best.value, abs=1e-6)
    assert "test_hr_at_10" in result.test_metrics and result.export_dir is not None


@pytest.mark.slow
def test_pruning_ends_a_hopeless_trial_early_and_its_run_is_killed_with_the_reason(workdir):
    # Trial 0: the config's learning rate; trial 1: a faster one; trial 2 cannot learn (1e-7). With two finished
    # trials the median pruner judges from epoch 1 on: the hopeless trial stops there, of 6.
    space = write_space(workdir / "space.yaml", """\
params:
  train.learning_rate: {low: 1.0e-7, high: 3.0e-2, log: true}
fixed:
  train.epochs: 6
  train.monitor: val_loss
  train.monitor_mode: min
enqueue:
  - {train.learning_rate: 0.01}
  - {train.learning_rate: 1.0e-7}
pruner: median
pruner_startup_trials: 2
pruner_warmup_epochs: 0
""")
    assert tune(NEUMF, "--space", space, "--trials", 3, "--set", f"tracking.uri={store(workdir)}") == 0
    trials = _study(workdir, "recommender-neumf-smoke").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    hopeless = trials[2]
    assert hopeless.params["train.learning_rate"] == pytest.approx(1e-7)
    assert list(hopeless.intermediate_values) == [1]
    assert "pruned by Optuna's median pruner at epoch 1 of 6" in hopeless.user_attrs["reelml.ended"]
    client, _, children = _runs(store(workdir))
    run = next(r for r in children if r.data.tags["reelml.tune.trial"] == "2")
    assert run.info.status == "KILLED" and run.data.tags["reelml.stopped"].startswith("pruned by Optuna's median pruner")
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 1


# --------------------------------------------------------------------------- shared and resumed studies

SLOW_TRIALS = """\
params:
  train.learning_rate: {low: 1.0e-3, high: 3.0e-2, log: true}
  model.factors: {low: 4, high: 16, step: 4}
fixed:
  train.epochs: %d
  train.max_steps_per_epoch: %d
pruner: none
"""


def _tuner(workdir, *args, log="tuner.log"):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(workdir / log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "training.cli", "tune", RECOMMENDER, *map(str, args)],
                                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)


def _finished_trials(study):
    return [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]


@pytest.mark.slow
def test_two_tuners_on_one_journal_run_6_trials_in_all_without_duplicates(workdir, tmp_path_factory):
    server, uri = serve_mlflow(tmp_path_factory.mktemp("mlflow-server"))  # two processes track through HTTP
    try:
        space = write_space(workdir / "space.yaml", SLOW_TRIALS % (4, 10))
        journal = workdir / "shared" / "study.journal"
        common = ["--space", space, "--trials", 6, "--storage", journal, "--study", "shared-study",
                  "--set", f"tracking.uri={uri}"]
        first = _tuner(workdir, *common, "--jobs", 2, log="first.log")  # itself two processes
        second = _tuner(workdir, *common, log="second.log")
        for p, log in ((first, "first.log"), (second, "second.log")):
            assert p.wait(timeout=600) == 0, (workdir / log).read_text()[-3000:]
        import optuna

        study = optuna.load_study(study_name="shared-study", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))))
        finished = _finished_trials(study)
        assert len(finished) == 6 and len({t.number for t in finished}) == 6
        assert all(t.user_attrs.get("reelml.surplus") or t in finished for t in study.get_trials())
        folders = [t.user_attrs["reelml.run_dir"] for t in finished]
        assert len(set(folders)) == 6  # each trial trained once, in its own run folder
        assert len({tuple(sorted(t.params.items())) for t in finished}) == 6  # no two tuners drew the same values
        processes = {t.user_attrs["reelml.process"] for t in finished}
        print(f"{len(processes)} tuner processes ran the 6 trials")

        _, parents, children = _runs(uri)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert sorted(int(r.data.tags["reelml.tune.trial"]) for r in children) == sorted(t.number for t in finished)
        assert {r.info.run_id for r in children} == {t.user_attrs["reelml.run_id"] for t in finished}
        assert all(r.info.status == "FINISHED" for r in children)
    finally:
        stop_mlflow_server(server)


@pytest.mark.slow
def test_a_killed_tuner_resumes_its_study_and_the_killed_trial_is_retried_from_its_checkpoint(workdir):
    space = write_space(workdir / "space.yaml", SLOW_TRIALS % (6, 40))
    args = ["--space", space, "--trials", 3, "--set", f"tracking.uri={store(workdir)}"]
    tuner = _tuner(workdir, *args)
    checkpoint = workdir / "runs/recommender-smoke/tune/trials/recommender-smoke-trial-1/checkpoints/last/checkpoint"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():  # trial 1 has finished an epoch (of 6): kill the tuner in the middle of it
        assert tuner.poll() is None and time.monotonic() < deadline, (workdir / "tuner.log").read_text()[-3000:]
        time.sleep(0.02)
    tuner.send_signal(signal.SIGKILL)
    tuner.wait()

    killed = _study(workdir).get_trials()
    assert [t.state.name for t in killed] == ["COMPLETE", "RUNNING"]
    assert tune(RECOMMENDER, *args) == 0  # the same command again, in another process

    trials = _study(workdir).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["reelml.ended"].startswith("killed: process")
    retry = trials[2]
    assert retry.user_attrs["reelml.retry_of"] == 1 and retry.params == trials[1].params
    assert retry.user_attrs["reelml.run_dir"].endswith("recommender-smoke-trial-1")  # the killed trial's folder
    assert len(_finished_trials(_study(workdir))) == 3  # the killed trial is not counted

    client, parents, children = _runs(store(workdir))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    resumed = next(r for r in children if r.data.tags["reelml.tune.trial"] == "2")  # the killed trial's run, resumed
    assert resumed.info.run_name == "recommender-smoke-trial-1"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # every epoch once: none lost, none logged twice
