"""The task contract is complete: a task written only against `training/tasks/base.py` trains, exports and predicts."""

from __future__ import annotations

import csv

import mlflow
import numpy as np
import pytest

from training import cli
from training import export as export_lib
from training.config import load as config_load
from training.tasks import TASKS
from training.tasks.base import Task

import toy_task


def test_every_task_implements_the_contract():
    for name, task in TASKS.items():
        assert isinstance(task, Task) and task.name == name
        assert not getattr(type(task), "__abstractmethods__", None), name


@pytest.fixture
def toy(monkeypatch, workdir):
    monkeypatch.setitem(TASKS, "toy", toy_task.TASK)
    monkeypatch.setitem(config_load.RUN_CONFIGS, "toy", toy_task.ToyRun)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)).astype(np.float32)
    y = 2 * x[:, 0] - 3 * x[:, 1] + 1
    rows = "x1,x2,y\n" + "".join(f"{a},{b},{c}\n" for (a, b), c in zip(x, y))
    (workdir / "rows.csv").write_text(rows)
    (workdir / "toy.yaml").write_text(
        "name: toy\ntask: toy\ndata:\n  path: rows.csv\ntrain:\n  epochs: 40\n  learning_rate: 0.1\n  warmup_epochs: 0\n"
        f"tracking:\n  uri: sqlite:///{workdir}/mlflow.db\n")
    return workdir


def test_a_new_task_trains_exports_and_predicts_through_the_cli(toy, capsys):
    assert cli.main(["train", "toy.yaml"]) == 0
    assert "predict: reelml predict exports/toy ROWS.csv" in capsys.readouterr().out
    client = mlflow.MlflowClient(f"sqlite:///{toy}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("reelml").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["reelml.task"] == "toy"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mae")] == list(range(1, 41))
    assert export_lib.versions(toy / "exports" / "toy") == [1]  # verified in a process without reelml

    assert cli.main(["predict", "exports/toy", "--help"]) == 0
    assert "CSV files with the training file's feature columns" in capsys.readouterr().out
    assert cli.main(["predict", "exports/toy", "rows.csv", "-o", "out.csv"]) == 0
    predicted = [float(r["prediction"]) for r in csv.DictReader(open(toy / "out.csv"))]
    truth = np.loadtxt(toy / "rows.csv", delimiter=",", skiprows=1)[:, 2]
    assert len(predicted) == 200 and np.abs(np.array(predicted) - truth).mean() < 0.1

    assert cli.main(["predict", "exports/toy", "rows.csv", "--prompt", "x"]) == 2
    assert "--prompt: not an option of a toy export" in capsys.readouterr().err
    assert cli.main(["evaluate", "toy.yaml"]) == 0
    assert cli.main(["export", "toy.yaml"]) == 0
    assert export_lib.versions(toy / "exports" / "toy") == [1, 2]
