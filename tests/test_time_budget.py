"""`train.max_minutes`: the run stops at its time budget, the cosine schedule ends there, a resumed run keeps its time."""

from __future__ import annotations

import itertools
import math

import keras

import pytest

from conftest import CONFIGS
from training import loop
from training.config import load_config
from training.train import train


class Crash(Exception):
    pass


def test_max_minutes_stops_at_the_budget_with_the_schedule_ending_there_and_a_resumed_run_keeps_its_time(
        workdir, monkeypatch):
    ticks = itertools.count()
    monkeypatch.setattr(loop, "clock", lambda: 30.0 * next(ticks))  # read at an epoch's start and end: 30 s each
    cfg = load_config(CONFIGS / "smoke" / "recommender.yaml", [
        "train.epochs=20", "train.max_minutes=2.5", "train.warmup_epochs=0", "train.lr_schedule=cosine",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db", "export.enabled=false"])

    def crash_after_epoch_3(epoch, logs):
        if epoch == 3:
            raise Crash()

    with pytest.raises(Crash):
        train(cfg, on_epoch=crash_after_epoch_3)
    result = train(cfg)  # the same command again: it resumes after epoch 3

    history = result.history
    assert len(history) == 5  # 150 s of budget, 30 s per epoch: 5 of the 20 epochs
    assert [h["train_seconds"] for h in history] == [30.0, 60.0, 90.0, 120.0, 150.0]  # epochs 4-5 count on from 90 s
    assert [h["planned_epochs"] for h in history] == [5.0] * 5
    rates = [h["learning_rate"] for h in history]  # after each epoch's last step
    assert rates[-1] == pytest.approx(0.0, abs=1e-9)  # the cosine ends with the budget, not at epoch 20
    assert rates[0] > rates[1] > rates[2] > rates[3] > rates[4]
    assert rates[2] == pytest.approx(cfg.train.learning_rate * 0.5 * (1 + math.cos(math.pi * 3 / 5)))
    assert result.test_metrics  # the best epoch was evaluated


def test_without_max_minutes_the_schedule_is_keras_own():
    cfg = load_config(CONFIGS / "smoke" / "recommender.yaml", ["train.lr_schedule=cosine"])
    assert isinstance(loop.make_schedule(cfg.train, 4), keras.optimizers.schedules.CosineDecay)
    cfg.train.max_minutes = 1.0
    assert isinstance(loop.make_schedule(cfg.train, 4), loop.BudgetedCosine)


def test_a_slow_epoch_early_on_neither_ends_the_run_early_nor_runs_it_past_the_budget():
    import tensorflow as tf

    cfg = load_config(CONFIGS / "smoke" / "recommender.yaml", ["train.epochs=100", "train.max_minutes=5"])
    budget = loop.TimeBudget(cfg.train, 10, None, tf.distribute.get_strategy(), [])
    times = [40.0, 60.0] + [20.0] * 100  # tracing, one slow epoch (the machine busy), then steady ones
    epochs = 0
    while not budget.done(epochs):
        epochs += 1
        budget.after_epoch(epochs, times[epochs - 1])
    # Planned after the slow epoch alone, it would stop after 5 epochs (140 s of 300).
    assert 300 - 30 <= budget.spent <= 300, (epochs, budget.spent)  # at most about an epoch left unused
    assert budget.planned == epochs
