"""The frame CNN recipe's training levers: MixUp and CutMix batches, and the weights' moving average (EMA)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from training.config import load_config
from training.epochs import set_epoch
from training.tasks.frames.mixing import mixed_batches

from conftest import CONFIGS, smoke_overrides

CLASSES = 6


def _batches():
    """Two batches of six frames; frame i is flat at value 10 * (i + 1) and is the only one of class i % 6."""
    values = 10.0 * np.arange(1, 13, dtype="float32")
    x = np.broadcast_to(values[:, None, None, None], (12, 16, 20, 3)).copy()
    return tf.data.Dataset.from_tensor_slices((x, np.arange(12, dtype="int32") % CLASSES)).batch(6), values


def _epoch(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_frames_carry_their_label_shares(mixup, cutmix):
    """Each frame's mean is the share-weighted mean of the two frames it mixes; CutMix's pixels are one or the other."""
    ds, values = _batches()
    set_epoch(0)
    epoch = _epoch(mixed_batches(ds, CLASSES, mixup, cutmix, seed=7))
    kinds = set()
    for b, (x, y) in enumerate(epoch):
        batch_values = values[6 * b: 6 * b + 6]
        assert y.shape == (6, CLASSES) and y.dtype == np.float32
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
        assert ((y > 1e-6).sum(axis=1) <= 2).all()  # a frame and its partner, no more
        np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), y @ batch_values, rtol=1e-5)
        pasted = all(set(np.unique(frame)) <= set(batch_values) for frame in x)
        mixed = (y.max(axis=1) < 1 - 1e-6).any()
        kinds.add("cutmix" if pasted else "mixup")
        assert mixed  # a Beta draw of exactly 0 or 1 has probability zero
    if not cutmix:
        assert kinds == {"mixup"}
    if not mixup:
        assert kinds == {"cutmix"}


def test_an_epoch_mixes_the_same_way_again_and_the_next_epoch_otherwise():
    """Draws are keyed on (seed, epoch, batch): a resumed epoch sees the same batches (the SIGKILL contract)."""
    ds, _ = _batches()
    mixed = mixed_batches(ds, CLASSES, 0.4, 1.0, seed=7)
    set_epoch(3)
    first, again = _epoch(mixed), _epoch(mixed)
    set_epoch(4)
    other = _epoch(mixed)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(y1, y2) for (_, y1), (_, y2) in zip(first, other))
    set_epoch(0)


def test_no_mixing_keeps_the_batches_as_they_are():
    ds, _ = _batches()
    assert mixed_batches(ds, CLASSES, 0.0, 0.0, seed=7) is ds


def test_ema_weights_are_what_validation_measures_and_what_is_tested_and_exported(sample_frames, workdir):
    """With train.ema_momentum, every val_ metric is of the averaged weights, the checkpoint keeps the trained ones
    beside them (training resumes from those), and the run's model ends as the averages."""
    from training import train as training

    cfg = load_config(CONFIGS / "smoke" / "frames.yaml", smoke_overrides(sample_frames, workdir) + [
        "train.ema_momentum=0.5", "train.epochs=3", "train.restore_best=false", "data.mixup=0.4", "data.cutmix=1.0"])
    result = training.train(cfg)
    assert result.export_dir is not None  # the export's check (a fresh process, outputs compared) passed

    b = training.build(cfg, workdir / "runs" / cfg.name, tf.distribute.get_strategy())
    b.checkpoints.restore()
    trained = [v.numpy().copy() for v in b.model.trainable_variables]
    raw = b.steps.evaluate(b.data.validation, prefix="val_")["val_loss"]
    b.steps.adopt_averaged_weights()
    averaged = b.steps.evaluate(b.data.validation, prefix="val_")["val_loss"]
    assert averaged == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)
    assert raw != pytest.approx(averaged, rel=1e-4)
    assert any(not np.allclose(t, v.numpy()) for t, v in zip(trained, b.model.trainable_variables))
    assert result.test_metrics["test_accuracy"] == pytest.approx(
        b.steps.evaluate(b.data.test, prefix="test_")["test_accuracy"])
    assert training.evaluate(cfg)["val_loss"] == pytest.approx(averaged, rel=1e-5)  # `reelml evaluate` too
