"""The end-of-training report: baselines on the same split (TopPop, and ALS and BPR from `baselines.py`), and the
model's HR@K curve against theirs."""

from __future__ import annotations

import numpy as np

from training.tasks.recommender.baselines import fit_baselines
from training.tasks.recommender.metrics import held_out_ranks, ranking
from training.tasks.recommender.serving import popularity


def report(cfg, model, data):
    """The baselines of `report.baselines` on the same split (validation and test), and HR@K for K = 1..20 of the
    model against them.

    Args:
        cfg: the run config (`report.*`, `data.top_k`, `model.name`, `seed`).
        model: the trained NCF model.
        data: the task's `Data`; without `data.test` (a sweep's trial leaves test unseen) only validation is scored.

    Returns:
        `({"val_toppop_hr_at_K": ..., "test_als_ndcg_at_K": ..., "als_chosen_factors": ..., ...},
        {"hit_rate_at_k.png": figure})`; no figure without test users.
    """
    s = data.split
    metrics, test_ranks = {}, {}
    if "toppop" in cfg.report.baselines:
        pop = popularity(s, train_only=True)
        for prefix, candidates in (("val_", s.val_candidates), ("test_", s.test_candidates)):
            if len(candidates) == 0 or (prefix == "test_" and data.test is None):  # a sweep's trial leaves test unseen
                continue
            ranks = held_out_ranks(pop[candidates])
            for k in cfg.data.top_k:
                metrics[f"{prefix}toppop_hr_at_{k}"], metrics[f"{prefix}toppop_ndcg_at_{k}"] = ranking(ranks, k)
            if prefix == "test_":
                test_ranks["TopPop"] = ranks
    fitted, fitted_ranks = fit_baselines(cfg, s, with_test=data.test is not None)
    metrics.update(fitted)
    test_ranks.update(fitted_ranks)
    if data.test is None:
        return metrics, {}
    scores = np.concatenate([np.asarray(model(x, training=False)) for x, _ in data.test])  # one call per batch of users
    figure = hit_rate_figure(held_out_ranks(scores), test_ranks, cfg.model.name, s.test_candidates.shape[1])
    return metrics, {"hit_rate_at_k.png": figure}


def hit_rate_figure(model_ranks, baseline_ranks, model_name, candidates):
    """HR@K for K = 1..20, the model's and each baseline's.

    Args:
        model_ranks: `[N]` int, the model's rank of each test item.
        baseline_ranks: `{"TopPop": [N] int, "ALS": ..., ...}`, each baseline's (any of them, or none).
        model_name: the legend of the model's curve.
        candidates: items ranked per user, for the title.

    Returns:
        A matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = np.arange(1, 21)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, [(model_ranks < k).mean() for k in ks], marker="o", label=model_name)
    for (name, ranks), marker in zip(baseline_ranks.items(), "s^vD"):
        ax.plot(ks, [(ranks < k).mean() for k in ks], marker=marker, label=name)
    ax.set_xlabel("K")
    ax.set_ylabel("HR@K (test)")
    ax.set_title(f"held-out item among {candidates} candidates")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
