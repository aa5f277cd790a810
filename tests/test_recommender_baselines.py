"""The recommender's ALS and BPR baselines: logged beside the model, ALS's grid chosen on validation, switchable."""

from __future__ import annotations

import types

import numpy as np
import pytest

from training.config import load_config
from training.errors import ConfigError
from training.tasks.recommender import baselines
from training.tasks.recommender.baselines import fit_baselines
from training.tasks.recommender.report import report
from training.tasks.recommender.split import Split

from conftest import CONFIGS

SMOKE = CONFIGS / "smoke" / "recommender.yaml"


def synthetic_split(users=20, items=300, negatives=99, seed=0):
    """User u's validation item is u, its test item 100 + u, its negatives among 200..299; it trained on a few of
    the items u + 1 .. u + 5 (mod 100) and 200 + u."""
    rng = np.random.default_rng(seed)
    train_users = np.repeat(np.arange(users), 6).astype(np.int32)
    train_items = np.concatenate([np.r_[(u + np.arange(1, 6)) % 100, 200 + u] for u in range(users)]).astype(np.int32)
    free = np.arange(200, items)

    def candidates(held):
        rows = [np.r_[h, rng.choice(free[free != 200 + u], negatives, replace=False)] for u, h in enumerate(held)]
        return np.stack(rows).astype(np.int32)

    everyone = np.arange(users, dtype=np.int32)
    seen = sorted(set(zip(train_users.tolist(), train_items.tolist())))
    seen_items = np.array([i for _, i in seen], np.int32)
    return Split(
        user_ids=np.array([f"u{u:03d}" for u in range(users)]), item_ids=np.array([f"i{i:03d}" for i in range(items)]),
        train_users=train_users, train_items=train_items, train_weights=np.ones(len(train_users), np.float32),
        val_users=everyone, val_candidates=candidates(everyone), test_users=everyone,
        test_candidates=candidates(100 + everyone), seen_splits=np.arange(0, 6 * users + 1, 6, dtype=np.int64),
        seen_items=seen_items, duplicates=0,
    )


def test_a_smoke_run_logs_als_and_bpr_beside_the_model(workdir):
    import mlflow

    from training.train import train

    result = train(load_config(SMOKE, [f"tracking.uri=sqlite:///{workdir}/mlflow.db", "export.enabled=false"]))
    wanted = {"val_als_hr_at_10", "test_als_hr_at_10", "val_bpr_ndcg_at_10", "test_bpr_hr_at_10",
              "test_toppop_hr_at_10", "als_chosen_factors", "als_fit_seconds", "bpr_fit_seconds"}
    assert wanted <= set(result.test_metrics)
    logged = mlflow.MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    assert wanted <= set(logged)
    assert logged["test_als_hr_at_10"] == pytest.approx(result.test_metrics["test_als_hr_at_10"])
    assert 0.0 <= logged["test_bpr_hr_at_10"] <= 1.0


def test_als_grid_is_chosen_on_validation_never_on_test(monkeypatch):
    """Grid point `factors: 4` ranks every test item first and every validation item last; `factors: 8` the
    reverse. Choosing on test would pick 4 (listed first, too)."""
    split = synthetic_split()

    def fake_als(matrix, factors, regularization, alpha, iterations, seed):
        item = np.zeros((split.num_items, 1), np.float32)
        if factors == 4:
            item[100:200] = 1.0  # the test items (100..119) score 1, the rest 0
        else:
            item[:100] = 1.0  # the validation items (0..19)
        return np.ones((split.num_users, 1), np.float32), item

    monkeypatch.setattr(baselines, "fit_als", fake_als)
    cfg = load_config(SMOKE, ["report.baselines=[als]", "report.als_factors=[4, 8]", "report.als_regularization=[0.1]",
                              "report.als_alpha=[1.0]", "data.top_k=[5, 10]"])
    metrics, ranks = fit_baselines(cfg, split)
    assert metrics["als_chosen_factors"] == 8.0
    assert metrics["val_als_hr_at_10"] == 1.0 and metrics["val_als_ndcg_at_10"] == 1.0
    assert metrics["test_als_hr_at_10"] == 0.0 and (ranks["ALS"] == 99).all()  # ties count against the held-out item
    assert not any(k.startswith(("val_bpr", "test_bpr")) for k in metrics)


def test_als_ties_on_validation_hr_are_broken_by_ndcg(monkeypatch):
    split = synthetic_split()

    def fake_als(matrix, factors, regularization, alpha, iterations, seed):
        # Negative 200 + j scores j / 100. Both put every validation item in the top 10: `factors: 8` first,
        # `factors: 4` tenth (below the negatives 291..299).
        item = np.zeros((split.num_items, 1), np.float32)
        item[200:, 0] = np.arange(100) / 100
        item[:100] = 2.0 if factors == 8 else 0.905
        return np.ones((split.num_users, 1), np.float32), item

    monkeypatch.setattr(baselines, "fit_als", fake_als)
    cfg = load_config(SMOKE, ["report.baselines=[als]", "report.als_factors=[4, 8]", "report.als_regularization=[0.1]",
                              "report.als_alpha=[1.0]"])
    metrics, ranks = fit_baselines(cfg, split, with_test=False)
    assert metrics["als_chosen_factors"] == 8.0 and metrics["val_als_ndcg_at_10"] == 1.0
    assert ranks == {} and not any(k.startswith("test_") for k in metrics)


def test_baselines_can_be_switched_off_and_unknown_names_are_config_errors():
    cfg = load_config(SMOKE, ["report.baselines=[toppop]"])
    metrics, figures = report(cfg, None, types.SimpleNamespace(split=synthetic_split(), test=None))
    assert "val_toppop_hr_at_10" in metrics and figures == {}
    assert not any("als" in k or "bpr" in k for k in metrics)
    with pytest.raises(ConfigError, match=r"report\.baselines"):
        load_config(SMOKE, ["report.baselines=[toppop, knn]"])
    with pytest.raises(ConfigError, match=r"report\.baselines"):
        load_config(SMOKE, ["report.baselines=[als, als]"])


def test_without_test_data_only_validation_is_scored():
    """A sweep's trial (`data.test` None) fits ALS and BPR and scores validation only."""
    cfg = load_config(SMOKE, ["report.als_factors=[4, 8]", "report.als_regularization=[0.1]", "report.als_alpha=[1.0, 10.0]",
                              "report.bpr_factors=4", "report.bpr_iterations=5"])
    metrics, figures = report(cfg, None, types.SimpleNamespace(split=synthetic_split(), test=None))
    assert {"val_als_hr_at_10", "val_als_ndcg_at_10", "val_bpr_hr_at_10", "val_toppop_hr_at_10"} <= set(metrics)
    assert not any(k.startswith("test_") for k in metrics) and figures == {}


def test_baselines_are_deterministic():
    cfg = load_config(SMOKE, ["report.baselines=[als, bpr]", "report.als_factors=[8]", "report.als_regularization=[0.1]",
                              "report.als_alpha=[10.0]", "report.bpr_factors=8", "report.bpr_iterations=20"])
    split = synthetic_split()
    first, second = fit_baselines(cfg, split), fit_baselines(cfg, split)
    for name in ("ALS", "BPR"):
        np.testing.assert_array_equal(first[1][name], second[1][name])


def test_user_items_holds_the_training_weights():
    split = synthetic_split(users=3)
    split.train_weights = np.arange(1, 19, dtype=np.float32) / 9.5
    matrix = baselines.user_items(split)
    assert matrix.shape == (3, 300) and matrix.nnz == 18 and matrix.dtype == np.float32
    assert matrix[1, 200 + 1] == pytest.approx(split.train_weights[11])
