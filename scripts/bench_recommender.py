"""Recommender benchmarks, each measured side by side in one run (these machines are noisy).

    python scripts/bench_recommender.py [--config configs/recommender.yaml] [--repeats 3]

Runs on ../shared/data/movielens_100k when present (the config with `data.path` set to it and the NCF
split), else on the generated sample log.

(a) training throughput: (user, item) samples/s of reelml's training (its `tf.data` pipeline drawing
    fresh negatives every epoch, its loop with the config's `train.steps_per_execution`, as `reelml
    train` builds them) vs a plain Keras `model.fit` of the same model, loss and batch shapes fed from
    negatives pre-sampled once in numpy (Keras's default of one step per call). Measured for the shipped
    recipe (`--config`) and for NeuMF (the model of earlier figures). Target >= 1.2.
(b) ranking evaluation: HR@10 and NDCG@10 over all test users x 100 candidates as reelml computes
    them (Keras metrics over batches of users) vs a per-user `model.predict` loop like the NCF
    reference code. Target >= 50x faster.
(c) serving: `recommend(k=10)` for one user through the loaded SavedModel, median and p99 latency.
(d) time to quality: the shipped recipe trained from scratch by reelml's loop, test HR@10 measured
    after every epoch (for this report only: the run itself chooses nothing on test), against
    validation-tuned ALS fitted on the same split: wall time from the first training step to the
    first epoch at or above ALS's test HR@10, vs ALS's fit time (its whole validation grid, as every
    run fits it, and its chosen point alone). Target: within 10x.

Training epochs alternate (A, B, A, B, ...) after one warm-up epoch each; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training import export  # noqa: E402
from training.config import load_config  # noqa: E402
from training.tasks.recommender import TASK as recommender  # noqa: E402
from training.tasks.recommender.baselines import candidate_ranks, fit_als, ranking_metrics, user_items  # noqa: E402
from training.train import build  # noqa: E402

MOVIELENS = REPO.parent / "shared" / "data" / "movielens_100k"


def presampled_arrays(split, negatives, seed):
    """The plain peer's training input, drawn once in numpy: users `[N]`, candidates `[N, 1 + negatives]`
    (the positive first) and relevance `[N, 1 + negatives]`, the same batch shapes as reelml's pipeline."""
    rng = np.random.default_rng(seed)
    n = len(split.train_users)
    items = np.empty((n, 1 + negatives), np.int32)
    items[:, 0] = split.train_items
    items[:, 1:] = rng.integers(0, split.num_items, (n, negatives))  # collisions not removed: timing only
    relevance = np.zeros((n, 1 + negatives), np.float32)
    relevance[:, 0] = split.train_weights
    return split.train_users.astype(np.int32), items, relevance


def bench_config(path, overrides):
    """The config at `path` on MovieLens 100K when it is here (else on its own data), tracking off."""
    overrides = ["tracking.enabled=false", *overrides]
    if (MOVIELENS / "u.data").exists():
        overrides = [f"data.path={MOVIELENS / 'u.data'}", "data.source=file", *overrides]
    return load_config(path, overrides)


def throughput(cfg, repeats, workdir):
    """(a) for one config: reelml's built training vs plain Keras fit of the same model and loss."""
    keras.utils.set_random_seed(cfg.seed)
    built = build(cfg, workdir / f"a-{cfg.model.name}", tf.distribute.get_strategy())
    split, steps = built.data.split, built.steps
    callbacks = keras.callbacks.CallbackList([], model=built.model)
    samples = len(split.train_users) * (1 + cfg.data.train_negatives)

    plain = recommender.build_model(cfg, built.data)
    # Keras' defaults, as a user writes it: `jit_compile="auto"`, one step per call.
    plain.compile(keras.optimizers.Adam(cfg.train.learning_rate), recommender.make_loss(cfg, built.data))
    users, items, relevance = presampled_arrays(split, cfg.data.train_negatives, cfg.seed)
    x = {"user": users, "item": items}

    def ours_epoch():
        t = time.perf_counter()
        steps.train_epoch(built.data.train, built.data.train_steps, callbacks)
        return time.perf_counter() - t

    def plain_epoch():
        t = time.perf_counter()
        plain.fit(x, relevance, batch_size=cfg.data.batch_size, epochs=1, verbose=0, shuffle=True)
        return time.perf_counter() - t

    ours_epoch(), plain_epoch()  # warm-up: tracing, first pass of the pipeline
    ours_t, plain_t = [], []
    for _ in range(repeats):
        ours_t.append(ours_epoch())
        plain_t.append(plain_epoch())
    ours_rate, plain_rate = samples / statistics.median(ours_t), samples / statistics.median(plain_t)
    print(f"(a) {cfg.model.name} ({cfg.model.loss}, {cfg.data.train_negatives} negatives, jit_compile "
          f"{cfg.train.jit_compile}, steps_per_execution {cfg.train.steps_per_execution}): reelml {ours_rate:,.0f} samples/s vs plain Keras fit {plain_rate:,.0f} "
          f"samples/s: ratio {ours_rate / plain_rate:.2f} (target >= 1.2)", flush=True)
    return built, {"model": cfg.model.name, "loss": cfg.model.loss, "steps_per_execution": cfg.train.steps_per_execution,
                   "jit_compile": cfg.train.jit_compile,
                   "batch_samples": cfg.data.batch_size * (1 + cfg.data.train_negatives),
                   "ours_samples_per_s": ours_rate, "plain_keras_samples_per_s": plain_rate,
                   "ratio": ours_rate / plain_rate, "ours_epoch_s": ours_t, "plain_epoch_s": plain_t}


def time_to_quality(cfg, workdir):
    """(d) for one seed: seconds of reelml training until test HR@10 reaches validation-tuned ALS's, vs ALS's fit time."""
    keras.utils.set_random_seed(cfg.seed)
    built = build(cfg, workdir / f"d-{cfg.seed}", tf.distribute.get_strategy())
    split, r = built.data.split, cfg.report
    matrix = user_items(split)
    start = time.perf_counter()
    best = None
    for factors in r.als_factors:
        for regularization in r.als_regularization:
            for alpha in r.als_alpha:
                t = time.perf_counter()
                u, v = fit_als(matrix, factors, regularization, alpha, r.als_iterations, cfg.seed)
                point_s = time.perf_counter() - t
                val = ranking_metrics(candidate_ranks(u, v, split.val_users, split.val_candidates), [10], "")
                key = (val["hr_at_10"], val["ndcg_at_10"])
                if best is None or key > best[0]:
                    best = (key, (factors, regularization, alpha), u, v, point_s)
    grid_s = time.perf_counter() - start
    _, point, u, v, point_s = best
    als = ranking_metrics(candidate_ranks(u, v, split.test_users, split.test_candidates), [10], "test_")
    print(f"(d) seed {cfg.seed}: ALS {point}: test HR@10 {als['test_hr_at_10']:.4f}, NDCG@10 {als['test_ndcg_at_10']:.4f}; "
          f"grid {grid_s:.2f} s, chosen point {point_s:.2f} s", flush=True)

    callbacks = keras.callbacks.CallbackList([], model=built.model)
    trained, reached, curve = 0.0, None, []
    for epoch in range(1, cfg.train.epochs + 1):
        t = time.perf_counter()
        built.steps.train_epoch(built.data.train, built.data.train_steps, callbacks)
        trained += time.perf_counter() - t
        test = built.steps.evaluate(built.data.test, prefix="test_")
        curve.append({"epoch": epoch, "train_seconds": trained, "test_hr_at_10": test["test_hr_at_10"],
                      "test_ndcg_at_10": test["test_ndcg_at_10"]})
        print(f"    epoch {epoch}: {trained:.1f} s of training, test HR@10 {test['test_hr_at_10']:.4f}, "
              f"NDCG@10 {test['test_ndcg_at_10']:.4f}", flush=True)
        if reached is None and test["test_hr_at_10"] >= als["test_hr_at_10"]:
            reached = trained
            break
    if reached is None:
        print(f"(d) the recipe did not reach ALS's test HR@10 in {cfg.train.epochs} epochs", flush=True)
    else:
        print(f"(d) ALS's test HR@10 reached after {reached:.1f} s of training: {reached / grid_s:.1f}x ALS's grid, "
              f"{reached / point_s:.1f}x its chosen point (target <= 10x)", flush=True)
    return {"als_point": list(point), "als_grid_s": grid_s, "als_point_s": point_s, **{f"als_{k}": x for k, x in als.items()},
            "seconds_to_als_hr": reached, "x_als_grid": reached and reached / grid_s,
            "x_als_point": reached and reached / point_s, "curve": curve}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "recommender.yaml"), help="the shipped recipe")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-users", type=int, default=None, help="cap on users in the per-user predict loop")
    parser.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c", "d"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="(d): the seeds (and splits) to time")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    cfg = bench_config(args.config, [])
    # NeuMF (the model of the earlier figures) with the recipe's compilation settings.
    neumf = bench_config(REPO / "configs" / "recommender_ml100k_gmf.yaml" if (MOVIELENS / "u.data").exists()
                         else REPO / "configs" / "recommender_neumf.yaml",
                         ["model.name=neumf", f"train.jit_compile={cfg.train.jit_compile}",
                          f"train.steps_per_execution={cfg.train.steps_per_execution}"])
    workdir = Path(tempfile.mkdtemp(prefix="bench-rec-"))
    results = {"data": cfg.data.path or "sample", "device": tf.config.list_logical_devices()[0].device_type,
               "cpus": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
               "config": str(args.config)}

    # (a) training samples/s: reelml's training vs plain Keras fit on pre-sampled arrays, recipe and NeuMF.
    built = None
    if "a" not in args.skip:
        results["a"] = []
        for each in (cfg, neumf):
            b, figures = throughput(each, args.repeats, workdir)
            results["a"].append(figures)
            built = built or b
    if built is None:
        built = build(cfg, workdir / "b", tf.distribute.get_strategy())
        built.steps.train_epoch(built.data.train, built.data.train_steps,
                                keras.callbacks.CallbackList([], model=built.model))
    ours_model, steps, data = built.model, built.steps, built.data
    split = data.split
    results.update(users=split.num_users, items=split.num_items, train_positives=len(split.train_users))

    # (b) evaluation over all test users x 100 candidates vs a per-user predict loop.
    if "b" not in args.skip:
        t = time.perf_counter()
        ours_metrics = steps.evaluate(data.test, prefix="test_")
        ours_eval = time.perf_counter() - t
        t = time.perf_counter()
        ours_metrics = steps.evaluate(data.test, prefix="test_")  # the second pass: traced, cached
        ours_eval = min(ours_eval, time.perf_counter() - t)
        n_users = len(split.test_users) if args.eval_users is None else min(args.eval_users, len(split.test_users))
        hits, t = [], time.perf_counter()
        for u, candidates in zip(split.test_users[:n_users], split.test_candidates[:n_users]):
            scores = ours_model.predict({"user": np.full(len(candidates), u, np.int32), "item": candidates[:, None]},
                                        batch_size=len(candidates), verbose=0)[:, 0]
            hits.append(int((scores[1:] >= scores[0]).sum() < 10))
        per_user = (time.perf_counter() - t) * len(split.test_users) / n_users
        assert abs(np.mean(hits) - ours_metrics["test_hr_at_10"]) < 1e-6 or n_users < len(split.test_users)
        results.update(b_ours_eval_s=ours_eval, b_per_user_predict_s=per_user, b_speedup=per_user / ours_eval,
                       b_users=len(split.test_users), b_per_user_measured=n_users)
        print(f"(b) evaluation of {len(split.test_users)} users x {split.test_candidates.shape[1]} candidates: "
              f"{ours_eval * 1000:.1f} ms vs per-user predict loop {per_user:.2f} s: {per_user / ours_eval:,.0f}x (target >= 50x)",
              flush=True)

    # (c) recommend(k=10) latency for one user through the loaded SavedModel.
    if "c" not in args.skip:
        served, endpoints = recommender.serving_endpoints(cfg, ours_model, data, None)
        export_dir = export.export(served, endpoints, workdir / "exports", {"task": "recommender"}, cfg.to_yaml(), None)
        loaded = tf.saved_model.load(str(export_dir))
        recommend = loaded.signatures["recommend"]
        user_ids = [str(u) for u in split.user_ids]
        k = tf.constant([10])  # per row: one user per call
        for u in user_ids[:20]:
            recommend(user_id=tf.constant([u]), k=k)
        latencies = []
        for i in range(500):
            one = tf.constant([user_ids[i % len(user_ids)]])
            t = time.perf_counter()
            recommend(user_id=one, k=k)["item_id"].numpy()
            latencies.append(time.perf_counter() - t)
        median, p99 = np.percentile(latencies, 50) * 1000, np.percentile(latencies, 99) * 1000
        results.update(c_recommend_median_ms=median, c_recommend_p99_ms=p99, c_catalogue=split.num_items)
        print(f"(c) recommend(k=10), one user, loaded SavedModel, {split.num_items} items: median {median:.2f} ms, "
              f"p99 {p99:.2f} ms", flush=True)

    if "d" not in args.skip:
        results["d"] = {seed: time_to_quality(bench_config(args.config, [f"seed={seed}"]), workdir) for seed in args.seeds}
        reached = [d["seconds_to_als_hr"] for d in results["d"].values()]
        if all(r is not None for r in reached):
            ratios = [d["x_als_grid"] for d in results["d"].values()]
            print(f"(d) seeds {args.seeds}: ALS's test HR@10 reached after {statistics.mean(reached):.1f} +- "
                  f"{statistics.stdev(reached) if len(reached) > 1 else 0:.1f} s of training, "
                  f"{statistics.mean(ratios):.1f}x ALS's grid (target <= 10x)", flush=True)

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
