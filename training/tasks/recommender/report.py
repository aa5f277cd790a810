"""The end-of-training report: the TopPop baseline on the same split, and the model's HR@K curve against it."""

from __future__ import annotations

import numpy as np

from training.tasks.recommender.metrics import held_out_ranks, ranking
from training.tasks.recommender.serving import popularity


def report(cfg, model, data):
    """TopPop on the same split (validation and test), and HR@K for K = 1..20 of the model against TopPop.

    Args:
        cfg: the run config (`data.top_k`, `model.name`).
        model: the trained NCF model.
        data: the task's `Data`.

    Returns:
        `({"val_toppop_hr_at_K": ..., "test_toppop_ndcg_at_K": ...}, {"hit_rate_at_k.png": figure})`; no figure
        without test users.
    """
    s = data.split
    pop = popularity(s, train_only=True)
    metrics = {}
    for prefix, candidates in (("val_", s.val_candidates), ("test_", s.test_candidates)):
        if len(candidates) == 0:
            continue
        ranks = held_out_ranks(pop[candidates])
        for k in cfg.data.top_k:
            metrics[f"{prefix}toppop_hr_at_{k}"], metrics[f"{prefix}toppop_ndcg_at_{k}"] = ranking(ranks, k)
    if data.test is None:
        return metrics, {}
    scores = np.concatenate([np.asarray(model(x, training=False)) for x, _ in data.test])  # one call per batch of users
    model_ranks, pop_ranks = held_out_ranks(scores), held_out_ranks(pop[s.test_candidates])
    figure = hit_rate_figure(model_ranks, pop_ranks, cfg.model.name, s.test_candidates.shape[1])
    return metrics, {"hit_rate_at_k.png": figure}


def hit_rate_figure(model_ranks, pop_ranks, model_name, candidates):
    """HR@K for K = 1..20, the model's and TopPop's.

    Args:
        model_ranks: `[N]` int, the model's rank of each test item.
        pop_ranks: `[N]` int, TopPop's.
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
    ax.plot(ks, [(pop_ranks < k).mean() for k in ks], marker="s", label="TopPop")
    ax.set_xlabel("K")
    ax.set_ylabel("HR@K (test)")
    ax.set_title(f"held-out item among {candidates} candidates")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
