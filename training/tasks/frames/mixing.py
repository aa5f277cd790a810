"""MixUp and CutMix of training batches (`data.mixup`, `data.cutmix`): frames mixed, and their labels with them.

Each batch is mixed with a shuffled copy of itself, in a share drawn from a
Beta distribution: MixUp blends the whole frames (Zhang et al., 2018), CutMix
pastes one box of the partner frame and mixes the labels by the box's area (Yun
et al., 2019). Labels become class shares `[batch, classes]` (float32), which
the frames loss takes as they are. Every draw comes from a stateless seed keyed
on (run seed, epoch, batch), so a resumed epoch sees the same mixed batches
again (the SIGKILL contract). Keras' own `MixUp` and `CutMix` layers draw from a
stateful generator that a checkpoint does not hold, hence these few lines.
"""

from __future__ import annotations

import tensorflow as tf

from training.epochs import epoch_seeds

AUTOTUNE = tf.data.AUTOTUNE


def mixed_batches(train: tf.data.Dataset, num_classes: int, mixup: float, cutmix: float, seed: int) -> tf.data.Dataset:
    """`(pixels [batch, h, w, 3], int labels [batch])` batches -> `(mixed pixels, class shares [batch, classes])`.

    Args:
        train: the training batches, in the epoch's order.
        num_classes: width of the class shares.
        mixup: Beta parameter of MixUp's share (0: no MixUp).
        cutmix: Beta parameter of CutMix's share (0: no CutMix). With both, each batch draws one of the two.
        seed: the run's seed.

    Returns:
        The mixed batches (`train` itself when both are 0).
    """
    if not mixup and not cutmix:
        return train
    count = train.cardinality()

    def mix(index, x, y, epoch_seed):
        seeds = tf.random.experimental.stateless_split(tf.stack([epoch_seed, index]), 5)
        y = tf.one_hot(tf.cast(y, tf.int32), num_classes, dtype=tf.float32)
        n = tf.shape(x)[0]
        partner = tf.argsort(tf.random.stateless_uniform([n], seeds[0]))
        x2, y2 = tf.gather(x, partner), tf.gather(y, partner)
        use_cutmix = tf.constant(bool(cutmix)) if not (mixup and cutmix) else \
            tf.random.stateless_uniform([], seeds[1]) < 0.5
        alpha = tf.where(use_cutmix, float(cutmix or 1.0), float(mixup or 1.0))
        share = _beta(alpha, seeds[2], seeds[3])  # of the frame's own content
        x, share = tf.cond(use_cutmix, lambda: _paste_box(x, x2, share, seeds[4]), lambda: (share * x + (1 - share) * x2, share))
        return x, share * y + (1.0 - share) * y2

    def epoch(epoch_seed):
        return train.enumerate().map(lambda i, batch: mix(i, *batch, epoch_seed), num_parallel_calls=AUTOTUNE)

    ds = epoch_seeds(seed + 1).flat_map(epoch)  # another stream than the shuffle's (seed)
    ds = ds.apply(tf.data.experimental.assert_cardinality(count)) if count >= 0 else ds
    return ds.prefetch(AUTOTUNE)


def _beta(alpha, seed_a, seed_b):
    """One draw from Beta(alpha, alpha), as the ratio of two Gamma(alpha) draws."""
    a = tf.random.stateless_gamma([], seed_a, alpha=alpha)
    b = tf.random.stateless_gamma([], seed_b, alpha=alpha)
    return a / tf.maximum(a + b, 1e-12)


def _paste_box(x, x2, share, seed):
    """Pastes the same box of `x2` into every frame of `x`, its area `1 - share` of the frame (clipped at the edges).

    Returns:
        The frames, and the share of each frame that is still its own (the area outside the box).
    """
    shape = tf.shape(x)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    side = tf.sqrt(1.0 - share)
    centre = tf.random.stateless_uniform([2], seed)
    top = tf.clip_by_value(tf.round((centre[0] - side / 2) * height), 0.0, height)
    bottom = tf.clip_by_value(tf.round((centre[0] + side / 2) * height), 0.0, height)
    left = tf.clip_by_value(tf.round((centre[1] - side / 2) * width), 0.0, width)
    right = tf.clip_by_value(tf.round((centre[1] + side / 2) * width), 0.0, width)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    box = tf.cast((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right), x.dtype)[None, :, :, None]
    own = 1.0 - (bottom - top) * (right - left) / (height * width)
    return x * (1.0 - box) + x2 * box, own
