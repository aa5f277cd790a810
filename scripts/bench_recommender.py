"""Recommender benchmarks, each measured side by side in one run (these machines are noisy).

    python scripts/bench_recommender.py [--config configs/recommender_ml100k_gmf.yaml] [--repeats 3]

(a) training throughput: (user, item) samples/s of reelml's loop on its own pipeline (negatives
    drawn inside tf.data every epoch) vs a plain Keras `model.fit` of the same NeuMF fed from
    pre-sampled numpy arrays, with the same samples per batch. Target >= 1.0.
(b) ranking evaluation: HR@10 and NDCG@10 over all test users x 100 candidates as reelml computes
    them (Keras metrics over batches of users) vs a per-user `model.predict` loop like the NCF
    reference code. Target >= 50x faster.
(c) serving: `recommend(k=10)` for one user through the loaded SavedModel, median and p99 latency.

Training epochs alternate (A, B, A, B, ...) after one warm-up epoch each; medians are reported.
Uses ../shared/data/movielens_100k when present (configs/recommender_ml100k_gmf.yaml, as NeuMF
without pretraining), else the generated sample log.
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

from models import MODELS  # noqa: E402
from training import export, loop  # noqa: E402
from training.config import load_config  # noqa: E402
from training.tasks.recommender import TASK as recommender  # noqa: E402


def presampled_arrays(split, negatives, seed):
    """The NCF reference code's training input: (user, item, label) arrays drawn once, in numpy."""
    rng = np.random.default_rng(seed)
    n = len(split.train_users)
    users = np.repeat(split.train_users, 1 + negatives)
    items = np.empty((n, 1 + negatives), np.int32)
    items[:, 0] = split.train_items
    items[:, 1:] = rng.integers(0, split.num_items, (n, negatives))  # collisions not removed: timing only
    labels = np.zeros((n, 1 + negatives), np.float32)
    labels[:, 0] = 1
    order = rng.permutation(n * (1 + negatives))
    return users[order], items.reshape(-1)[order], labels.reshape(-1)[order]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = REPO / "configs" / "recommender_ml100k_gmf.yaml"
    parser.add_argument("--config", default=str(default))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-users", type=int, default=None, help="cap on users in the per-user predict loop")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    overrides = ["model.name=neumf", "tracking.enabled=false"]
    cfg = load_config(args.config, overrides)
    if cfg.data.source == "file" and not Path(cfg.data.path).exists():
        print(f"{cfg.data.path} not found: using the generated sample log", flush=True)
        cfg = load_config(REPO / "configs" / "recommender.yaml", overrides)
    workdir = Path(tempfile.mkdtemp(prefix="bench-rec-"))
    keras.utils.set_random_seed(cfg.seed)
    data = recommender.load_data(cfg, workdir)
    split = data.split
    pairs_per_batch = cfg.data.batch_size * (1 + cfg.data.train_negatives)
    results = {"data": cfg.data.path or "sample", "users": split.num_users, "items": split.num_items,
               "train_positives": len(split.train_users), "batch_positives": cfg.data.batch_size,
               "batch_samples": pairs_per_batch, "model": "neumf", "factors": cfg.model.factors,
               "mlp_layers": cfg.model.mlp_layers, "device": tf.config.list_logical_devices()[0].device_type,
               "tensorflow": tf.__version__, "keras": keras.__version__}

    # (a) training samples/s: reelml's loop vs plain Keras fit on pre-sampled arrays.
    strategy = tf.distribute.get_strategy()
    ours_model = recommender.build_model(cfg, data)
    optimizer = keras.optimizers.Adam(cfg.train.learning_rate)
    optimizer.build(ours_model.trainable_variables)
    steps = loop.Loop(ours_model, optimizer, recommender.make_loss(cfg, data), lambda: [], strategy,
                      make_eval_metrics=lambda: recommender.make_eval_metrics(cfg, data))
    callbacks = keras.callbacks.CallbackList([], model=ours_model)
    ours_samples = len(split.train_users) * (1 + cfg.data.train_negatives)

    plain = MODELS["neumf"](split.num_users, split.num_items, factors=cfg.model.factors,
                                        mlp_layers=cfg.model.mlp_layers, seed=cfg.seed)
    plain.compile(keras.optimizers.Adam(cfg.train.learning_rate), "binary_crossentropy", jit_compile=False)
    users, items, labels = presampled_arrays(split, cfg.data.train_negatives, cfg.seed)
    x, y = {"user": users, "item": items[:, None]}, labels[:, None]

    def ours_epoch():
        t = time.perf_counter()
        steps.train_epoch(data.train, data.train_steps, callbacks)
        return time.perf_counter() - t

    def plain_epoch():
        t = time.perf_counter()
        plain.fit(x, y, batch_size=pairs_per_batch, epochs=1, verbose=0, shuffle=True)
        return time.perf_counter() - t

    ours_epoch(), plain_epoch()  # warm-up: tracing, first pass of the pipeline
    ours_t, plain_t = [], []
    for _ in range(args.repeats):
        ours_t.append(ours_epoch())
        plain_t.append(plain_epoch())
    ours_rate, plain_rate = ours_samples / statistics.median(ours_t), len(users) / statistics.median(plain_t)
    results.update(a_ours_samples_per_s=ours_rate, a_plain_keras_samples_per_s=plain_rate, a_ratio=ours_rate / plain_rate,
                   a_ours_epoch_s=statistics.median(ours_t), a_plain_epoch_s=statistics.median(plain_t))
    print(f"(a) training: reelml loop {ours_rate:,.0f} samples/s vs plain Keras fit on pre-sampled arrays "
          f"{plain_rate:,.0f} samples/s: ratio {ours_rate / plain_rate:.2f} (target >= 1.0)", flush=True)

    # (b) evaluation over all test users x 100 candidates vs a per-user predict loop.
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

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
