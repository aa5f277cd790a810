"""Dialogue benchmarks, each measured side by side in one run (these machines are noisy).

    python scripts/bench_dialogue.py [--config configs/dialogue.yaml] [--steps 100] [--repeats 3] [--tokens 500]

(a) training throughput: tokens/s of the step `reelml train` runs (reelml's loop, its tf.data windows,
    `train.steps_per_execution` from the config) vs a plain Keras `model.fit` of a model of the same
    size, compiled with the same optimizer, loss and steps_per_execution, fed the same batches.
    Target >= 0.97. Chunks of `--steps` steps alternate (A, B, A, B, ...) after one warm-up chunk
    each; medians and the fastest chunks are reported.
(b) generation: 500 characters (or `--tokens`) at batch 1 through the loaded SavedModel's `generate`
    signature (the sampling loop inside the graph) vs a Python loop calling `model.predict` once per
    token on the last `data.seq_len` tokens, as the TF text-generation tutorial's users write it.
    Target >= 10x faster.

The model has the config's architecture with its initial weights: speed does not depend on them.
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
from training.tasks.dialogue import TASK  # noqa: E402
from training.tasks.dialogue.model import language_model  # noqa: E402
from training.tasks.dialogue.tokens import tokenize  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "dialogue.yaml"))
    parser.add_argument("--steps", type=int, default=100, help="training steps per timed chunk")
    parser.add_argument("--repeats", type=int, default=3, help="timed chunks per side")
    parser.add_argument("--tokens", type=int, default=500, help="tokens generated in (b)")
    parser.add_argument("--parts", default="ab", help="which benchmarks to run: a, b or ab")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    cfg = load_config(args.config, ["tracking.enabled=false", *args.overrides])
    workdir = Path(tempfile.mkdtemp(prefix="bench-dialogue-"))
    keras.utils.set_random_seed(cfg.seed)
    data = TASK.load_data(cfg, workdir)
    d, m, spe = cfg.data, cfg.model, cfg.train.steps_per_execution
    steps = max(spe, args.steps // spe * spe)
    tokens_per_step = d.batch_size * d.seq_len
    results = {"config": str(args.config), "cell": m.cell, "units": m.units, "level": d.level, "vocab_size": len(data.vocabulary) + 1,
               "batch_size": d.batch_size, "seq_len": d.seq_len, "steps_per_execution": spe, "steps_per_chunk": steps,
               "device": tf.config.list_logical_devices()[0].device_type, "tensorflow": tf.__version__, "keras": keras.__version__}

    strategy = tf.distribute.get_strategy()
    ours = TASK.build_model(cfg, data)
    if "a" in args.parts:
        train_side_by_side(args, cfg, data, ours, strategy, steps, tokens_per_step, results)
    if "b" in args.parts:
        generation_side_by_side(args, cfg, data, ours, workdir, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def train_side_by_side(args, cfg, data, ours, strategy, steps, tokens_per_step, results):
    """(a) training tokens/s: reelml's loop vs plain Keras fit, the same batches."""
    m, spe = cfg.model, cfg.train.steps_per_execution
    optimizer = loop.make_optimizer(cfg.train, data.train_steps, "float32")
    optimizer.build(ours.trainable_variables)
    steps_fn = loop.Loop(ours, optimizer, TASK.make_loss(cfg, data), lambda: TASK.make_metrics(cfg, data), strategy,
                         steps_per_execution=spe, make_eval_metrics=lambda: TASK.make_eval_metrics(cfg, data))
    callbacks = keras.callbacks.CallbackList([], model=ours)

    plain = MODELS[m.name](vocab_size=len(data.vocabulary) + 1, seed=cfg.seed, **m.model_dump(exclude={"name"}))
    assert plain.count_params() == ours.count_params()
    plain.compile(loop.make_optimizer(cfg.train, data.train_steps, "float32"),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps_per_execution=spe, jit_compile=False)

    def ours_chunk():
        t = time.perf_counter()
        steps_fn.train_epoch(data.train, steps, callbacks)
        return time.perf_counter() - t

    # The same batches; a stateful run's carry `{"tokens", "reset"}`, of which the plain model reads the tokens.
    plain_batches = data.train.map(lambda x, y: (x["tokens"], y)) if cfg.data.stateful else data.train

    def plain_chunk():
        t = time.perf_counter()
        plain.fit(plain_batches.take(steps), epochs=1, verbose=0)
        return time.perf_counter() - t

    ours_chunk(), plain_chunk()  # warm-up: tracing, the first pass of the pipeline
    ours_t, plain_t = [], []
    for _ in range(args.repeats):
        ours_t.append(ours_chunk())
        plain_t.append(plain_chunk())
    ours_rate, plain_rate = steps * tokens_per_step / statistics.median(ours_t), steps * tokens_per_step / statistics.median(plain_t)
    fastest = min(plain_t) / min(ours_t)
    results.update(a_ours_tokens_per_s=ours_rate, a_plain_keras_tokens_per_s=plain_rate, a_ratio_median=ours_rate / plain_rate,
                   a_ratio_fastest=fastest, a_ours_chunk_s=ours_t, a_plain_chunk_s=plain_t)
    print(f"(a) training: reelml loop {ours_rate:,.0f} tokens/s vs plain Keras fit {plain_rate:,.0f} tokens/s: ratio "
          f"{ours_rate / plain_rate:.3f} median, {fastest:.3f} fastest chunks (target >= 0.97)", flush=True)



def generation_side_by_side(args, cfg, data, ours, workdir, results):
    """(b) generating `--tokens` tokens at batch 1: the loaded SavedModel vs model.predict once per token."""
    d = cfg.data
    served, endpoints = TASK.serving_endpoints(cfg, ours, data, None)
    ours = language_model(ours)  # a stateful run's plain model: tokens in, logits out
    export_dir = export.export(served, endpoints, workdir / "exports", {"task": "dialogue"}, cfg.to_yaml(), None)
    generate = tf.saved_model.load(str(export_dir)).signatures["generate"]
    prompt = "ROMEO:" if d.level == "char" else "romeo:"

    def saved_model_generation():
        t = time.perf_counter()
        out = generate(prompt=tf.constant([prompt]), max_tokens=tf.constant([args.tokens]), temperature=tf.constant([1.0]),
                       top_k=tf.constant([0]), seed=tf.constant([1], tf.int64))
        out["text"].numpy()
        return time.perf_counter() - t

    vocabulary = np.array(["[UNK]", *data.vocabulary], dtype=object)
    index = {t: i for i, t in enumerate(vocabulary)}
    prompt_ids = [index.get(t.decode(), 0) for t in tokenize([prompt], d.level, d.lowercase).flat_values.numpy()]

    def predict_loop_generation():
        rng = np.random.default_rng(1)
        ids = list(prompt_ids)
        t = time.perf_counter()
        for _ in range(args.tokens):
            logits = ours.predict(np.array([ids[-d.seq_len:]], np.int32), verbose=0)[0, -1]
            p = np.exp(logits[1:] - logits[1:].max())
            ids.append(1 + int(rng.choice(len(p), p=p / p.sum())))
        "".join(vocabulary[ids[len(prompt_ids):]])
        return time.perf_counter() - t

    saved_model_generation(), predict_loop_generation()  # warm-up
    ours_g, predict_g = [], []
    for _ in range(args.repeats):
        ours_g.append(saved_model_generation())
        predict_g.append(predict_loop_generation())
    speedup = statistics.median(predict_g) / statistics.median(ours_g)
    results.update(b_tokens=args.tokens, b_saved_model_s=ours_g, b_predict_loop_s=predict_g, b_speedup=speedup)
    print(f"(b) generating {args.tokens} tokens at batch 1: loaded SavedModel {statistics.median(ours_g) * 1000:.0f} ms vs "
          f"model.predict per token {statistics.median(predict_g):.2f} s: {speedup:.0f}x (target >= 10x)", flush=True)


if __name__ == "__main__":
    main()
