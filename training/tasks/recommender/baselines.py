"""Matrix-factorisation baselines from the `implicit` library: ALS and BPR, on the model's own split.

Both are fitted on the training interactions the model trains on (with their
weights) and rank the same validation and test candidates with the same
metrics (`metrics.held_out_ranks`: ties count against the baseline). ALS's
grid (`report.als_factors` x `als_regularization` x `als_alpha`) is chosen on
validation HR@10 (the first `data.top_k` without 10), ties broken by NDCG;
test only scores the chosen point. BPR has no grid: its settings are fixed.

Fits run on the CPU with BLAS held to one thread, as `implicit` recommends (its
own threads parallelise the solver); seeded with the run's `seed`. ALS solves
each user's and item's row on its own, so it is deterministic with any number
of threads; BPR's threads update shared factors without locks, so it runs on
one thread.
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np

from training.tasks.recommender.metrics import held_out_ranks, ranking

ALS_THREADS = min(4, os.cpu_count() or 1)


def user_items(split):
    """The training interactions as a sparse `[num_users, num_items]` matrix.

    Args:
        split: the task's `Split`.

    Returns:
        A `scipy.sparse.csr_matrix` of float32: `train_weights` at (`train_users`, `train_items`), zero elsewhere.
    """
    import scipy.sparse

    return scipy.sparse.csr_matrix(
        (split.train_weights.astype(np.float32), (split.train_users, split.train_items)),
        shape=(split.num_users, split.num_items), dtype=np.float32,
    )


def fit_als(matrix, factors, regularization, alpha, iterations, seed):
    """Implicit-feedback ALS (Hu, Koren and Volinsky 2008) with `implicit`'s conjugate-gradient solver, on the CPU.

    Args:
        matrix: `[U, I]` CSR of interaction weights, as `user_items` gives.
        factors: latent factors.
        regularization: L2 penalty on the factors.
        alpha: confidence scaling: an interaction of weight w has confidence alpha * w, an unobserved pair 1.
        iterations: alternating sweeps.
        seed: seeds the initial factors.

    Returns:
        `(user_factors [U, F], item_factors [I, F])`, float32 numpy arrays.
    """
    import threadpoolctl
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpoolctl.threadpool_limits(1, "blas"):  # implicit checks BLAS threads when the model is made
        als = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
                                      num_threads=ALS_THREADS, random_state=seed)
        als.fit(matrix, show_progress=False)
    return np.asarray(als.user_factors, np.float32), np.asarray(als.item_factors, np.float32)


def fit_bpr(matrix, factors, learning_rate, regularization, iterations, seed):
    """Bayesian personalised ranking (Rendle et al. 2009) by SGD on sampled triples, on the CPU and one thread.

    Args:
        matrix: `[U, I]` CSR of the training interactions (BPR uses which pairs are set, not their weights).
        factors: latent factors; `implicit` adds an item bias (a column of ones on the user side).
        learning_rate: SGD step.
        regularization: L2 penalty on the factors.
        iterations: epochs.
        seed: seeds the initial factors and the sampling.

    Returns:
        `(user_factors [U, F + 1], item_factors [I, F + 1])`, float32 numpy arrays.
    """
    import threadpoolctl
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    with threadpoolctl.threadpool_limits(1, "blas"):
        bpr = BayesianPersonalizedRanking(factors=factors, learning_rate=learning_rate, regularization=regularization,
                                          iterations=iterations, num_threads=1, random_state=seed)
        bpr.fit(matrix, show_progress=False)
    return np.asarray(bpr.user_factors, np.float32), np.asarray(bpr.item_factors, np.float32)


def candidate_ranks(user_factors, item_factors, users, candidates):
    """Where each held-out item (column 0) lands among its candidates, scored as user-item dot products.

    Args:
        user_factors: `[U, F]` float32.
        item_factors: `[I, F]` float32.
        users: `[N]` int, the evaluated users.
        candidates: `[N, C]` int, each user's held-out item first, then its negatives.

    Returns:
        `[N]` int ranks (0 = first), ties counted against the held-out item (`metrics.held_out_ranks`).
    """
    ranks = [held_out_ranks(np.einsum("nf,ncf->nc", user_factors[users[i:i + 1024]], item_factors[candidates[i:i + 1024]]))
             for i in range(0, len(users), 1024)]  # 1024 users at a time: [1024, C, F] floats at most
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)


def ranking_metrics(ranks, top_k, prefix):
    """`{prefix + "hr_at_K": ..., prefix + "ndcg_at_K": ...}` for each K in `top_k`."""
    out = {}
    for k in top_k:
        out[f"{prefix}hr_at_{k}"], out[f"{prefix}ndcg_at_{k}"] = ranking(ranks, k)
    return out


def selection_k(top_k):
    """The cut-off ALS's grid is chosen on: 10 if measured, else the first of `data.top_k`."""
    return 10 if 10 in top_k else top_k[0]


def fit_baselines(cfg, split, with_test=True):
    """ALS (its grid chosen on validation) and BPR, as `cfg.report.baselines` asks, scored like the model.

    Args:
        cfg: the run config (`report.*`, `data.top_k`, `seed`).
        split: the task's `Split`: the model's training interactions and its validation and test candidates.
        with_test: score the test candidates (False for a sweep's trial, which leaves test unseen).

    Returns:
        `(metrics, test_ranks)`: `metrics` holds `val_als_hr_at_K`, `test_bpr_ndcg_at_K`, ... for each K of
        `data.top_k` (no `val_` ones without validation users, no `test_` ones without `with_test`), the chosen
        grid point (`als_chosen_factors`, `als_chosen_regularization`, `als_chosen_alpha`) and the seconds
        spent (`als_fit_seconds`: fitting and validating the whole grid; `bpr_fit_seconds`); `test_ranks` maps
        `"ALS"` and `"BPR"` to `[N]` test ranks (empty without test).

    Example:

    >>> metrics, ranks = fit_baselines(cfg, data.split)  # doctest: +SKIP
    >>> metrics["val_als_hr_at_10"], metrics["als_chosen_factors"]  # doctest: +SKIP
    (0.41, 64.0)
    """
    r, top_k = cfg.report, cfg.data.top_k
    has_val = len(split.val_candidates) > 0
    has_test = with_test and len(split.test_candidates) > 0
    matrix = user_items(split)
    metrics, test_ranks = {}, {}

    if "als" in r.baselines:
        k = selection_k(top_k)
        grid = list(itertools.product(r.als_factors, r.als_regularization, r.als_alpha))
        if not has_val:
            grid = grid[:1]  # nothing to choose on (`data.train_on_validation`): the first of each list
        start = time.perf_counter()
        best = None  # (validation key, point, user factors, item factors, validation metrics)
        for factors, regularization, alpha in grid:
            user_f, item_f = fit_als(matrix, factors, regularization, alpha, r.als_iterations, cfg.seed)
            val = ranking_metrics(candidate_ranks(user_f, item_f, split.val_users, split.val_candidates), top_k,
                                  "val_als_") if has_val else {}
            key = (val.get(f"val_als_hr_at_{k}", 0.0), val.get(f"val_als_ndcg_at_{k}", 0.0))
            if best is None or key > best[0]:  # only validation chooses; the first of equal points stays
                best = (key, (factors, regularization, alpha), user_f, item_f, val)
        metrics["als_fit_seconds"] = time.perf_counter() - start
        _, (factors, regularization, alpha), user_f, item_f, val = best
        metrics.update(val, als_chosen_factors=float(factors), als_chosen_regularization=float(regularization),
                       als_chosen_alpha=float(alpha))
        if has_test:
            test_ranks["ALS"] = candidate_ranks(user_f, item_f, split.test_users, split.test_candidates)
            metrics.update(ranking_metrics(test_ranks["ALS"], top_k, "test_als_"))

    if "bpr" in r.baselines:
        start = time.perf_counter()
        user_f, item_f = fit_bpr(matrix, r.bpr_factors, r.bpr_learning_rate, r.bpr_regularization, r.bpr_iterations,
                                 cfg.seed)
        metrics["bpr_fit_seconds"] = time.perf_counter() - start
        if has_val:
            metrics.update(ranking_metrics(candidate_ranks(user_f, item_f, split.val_users, split.val_candidates),
                                           top_k, "val_bpr_"))
        if has_test:
            test_ranks["BPR"] = candidate_ranks(user_f, item_f, split.test_users, split.test_candidates)
            metrics.update(ranking_metrics(test_ranks["BPR"], top_k, "test_bpr_"))
    return metrics, test_ranks
