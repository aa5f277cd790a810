"""Where and how a run computes: the tf.distribute strategy, the chief, mixed precision and XLA.

`make_strategy` runs first in a process: multi-worker collectives must be set
up before any other TensorFlow op runs.
"""

from __future__ import annotations

import json
import os
import re

import tensorflow as tf

from training.errors import UserError


def cluster_resolver(train_cfg=None):
    """Where the workers are: TF_CONFIG, else a SLURM job step with several tasks, else `train.cluster_workers`.

    Returns None when nothing describes a cluster of more than one worker.
    """
    resolvers = tf.distribute.cluster_resolver
    if os.environ.get("TF_CONFIG"):
        try:
            config = json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise UserError(f"TF_CONFIG: not valid JSON ({e})") from None
        if sum(len(v) for v in config.get("cluster", {}).values()) > 1:
            return resolvers.TFConfigClusterResolver()
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return resolvers.SlurmClusterResolver(port_base=int(os.environ.get("REELML_SLURM_PORT", "8888")))
    if train_cfg is not None and train_cfg.cluster_workers:
        return resolvers.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": train_cfg.cluster_workers}), task_type="worker", task_id=train_cfg.worker_index,
        )
    return None


def make_strategy(train_cfg) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for `train.strategy` (before any other TensorFlow op runs: collectives
    must be configured at start-up)."""
    name = train_cfg.strategy
    if name in ("multi_worker", "auto"):
        resolver = cluster_resolver(train_cfg)
        if resolver is not None:
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        if name == "multi_worker":
            raise UserError("train.strategy `multi_worker`: no cluster found: set TF_CONFIG, run as several SLURM tasks, "
                            "or set train.cluster_workers and train.worker_index (see scripts/launch_local.py)")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    # The default strategy: one device (the first GPU if any), as model.fit uses it, no extra copies.
    return tf.distribute.get_strategy()


def barrier(strategy) -> None:
    """Returns once every worker has got here (a one-number all-reduce; nothing to wait for on one worker)."""
    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


def resolve_precision(name: str) -> str:
    if name != "auto":
        return name
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if capability >= (7, 0):  # tensor cores
            return "mixed_float16"
    return "float32"


def resolve_jit(name: str, model=None, sample_batch=None) -> bool:
    """Whether the training step is XLA-compiled, for `train.jit_compile`.

    `auto` turns XLA on for GPUs, where it fuses well, and off on CPU, where it
    measured slower (docs/benchmarks.md); and off, with a note, for a model with
    ops XLA has no kernel for (Keras' random translation and zoom, for one).
    `on` insists, and stops with a clear error for such a model. `sample_batch`:
    returns one `(inputs, targets)` batch to trace the model with.
    """
    if name == "off" or (name == "auto" and not tf.config.list_physical_devices("GPU")):
        return False
    problem = None if model is None else _xla_problem(model, sample_batch()[0])
    if problem is None:
        return True
    if name == "on":
        raise UserError(f"train.jit_compile `on`: XLA cannot compile this model's training pass ({problem}); "
                        "set train.jit_compile: auto or off, or leave out the layers named")
    print(f"XLA off (train.jit_compile: auto): {problem}", flush=True)
    return False


def _xla_problem(model, sample) -> str | None:
    """Lowers the model's training pass to XLA without running it; returns what XLA refused, if anything."""
    forward = tf.function(lambda x: model(x, training=True), jit_compile=True)
    try:
        forward.experimental_get_compiler_ir(sample)(stage="hlo")
    except (ValueError, tf.errors.OpError) as e:
        unsupported = sorted(set(re.findall(r"(\w+) \(No registered", str(e))))
        return f"no XLA kernel for {', '.join(unsupported)}" if unsupported else str(e).splitlines()[0][:300]
    return None


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )
