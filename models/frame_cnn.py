"""Frame CNN: classifies video frames (shot type, scene, location).

A VGG-style stack of conv blocks and a small classifier head. Resizing,
rescaling and augmentation are layers of the model, so a frame of any size
with pixel values in [0, 255] goes in and class probabilities come out, in
training, in evaluation and in the exported SavedModel alike.
"""

from __future__ import annotations

import keras
from keras import layers


def build_frame_cnn(
    num_classes,
    input_size=128,
    filters=(32, 64, 128, 256),
    convs_per_block=2,
    kernel_size=3,
    padding="same",
    batch_norm=True,
    batch_norm_momentum=0.99,
    sync_batch_norm=True,
    pooling="max",
    head="global_average",
    dense_units=(),
    dropout=0.3,
    augment=True,
    augment_translation=0.1,
    augment_zoom=0.1,
    augment_contrast=0.1,
    test_time_flip=False,
    l2=0.0,
    seed=None,
):
    """Builds the frame classifier.

    Args:
        num_classes: int, number of classes of the softmax output.
        input_size: int, every frame is resized to `input_size x input_size`.
        filters: sequence of int, the filters of each conv block. Each block
            is `convs_per_block` convolutions followed by 2x2 pooling.
        convs_per_block: int, conv layers in every block, or a sequence of
            int with one entry per block (e.g. fewer convs where maps are large).
        kernel_size: int, square kernel size of every convolution.
        padding: `"same"` or `"valid"`, padding of every convolution.
        batch_norm: bool, BatchNormalization between each conv and its ReLU.
        batch_norm_momentum: float, momentum of the moving statistics (lower
            adapts faster: small datasets have few steps per epoch).
        sync_batch_norm: bool, batch statistics over the global batch, summed
            across replicas and workers, so N replicas train like one device
            with the same global batch (`False`: per-replica statistics, one
            all-reduce less per layer and step).
        pooling: `"max"` or `"average"`, the 2x2 pooling closing each block.
        head: `"global_average"` (global average pooling) or `"flatten"`.
        dense_units: sequence of int, hidden Dense (ReLU) layers of the head.
        dropout: float, dropout rate before each Dense layer of the head.
        augment: bool, random flip, translation, zoom and contrast (training only).
        augment_translation: float, largest shift as a fraction of the frame.
        augment_zoom: float, largest zoom in or out as a fraction.
        augment_contrast: float, largest contrast change as a fraction.
        test_time_flip: bool, in inference average the probabilities of each
            frame and its mirror image (twice the inference cost; training is
            unchanged).
        l2: float, L2 penalty on every kernel (0 disables it).
        seed: int or None, seed of the augmentation layers.

    Returns:
        A `keras.Model` taking float frames of shape `(batch, height, width, 3)`
        with values in [0, 255] (any height and width) and returning class
        probabilities of shape `(batch, num_classes)`, in float32.

    Example:

    >>> model = build_frame_cnn(num_classes=6, input_size=64, filters=(8, 16))
    >>> model(keras.ops.zeros((2, 100, 80, 3))).shape
    (2, 6)
    """
    if not filters:
        raise ValueError("`filters` must name at least one conv block, got an empty list")
    if padding not in ("same", "valid"):
        raise ValueError(f'`padding` must be "same" or "valid", got {padding!r}')
    if pooling not in ("max", "average"):
        raise ValueError(f'`pooling` must be "max" or "average", got {pooling!r}')
    if head not in ("global_average", "flatten"):
        raise ValueError(f'`head` must be "global_average" or "flatten", got {head!r}')
    if isinstance(convs_per_block, int):
        convs_per_block = [convs_per_block] * len(filters)
    if len(convs_per_block) != len(filters):
        raise ValueError(
            f"`convs_per_block` must have one entry per block ({len(filters)}), got {list(convs_per_block)}"
        )
    regularizer = keras.regularizers.L2(l2) if l2 else None

    inputs = keras.Input(shape=(None, None, 3), name="frames")
    # Antialiased, as the input pipeline resizes: a frame served at full size is seen as in training.
    x = ResizeIfNeeded(input_size, input_size, antialias=True, name="resize")(inputs)
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    if augment:
        x = layers.RandomFlip("horizontal", seed=seed, name="augment_flip")(x)
        if augment_translation:
            x = layers.RandomTranslation(
                augment_translation, augment_translation, fill_mode="reflect", seed=seed, name="augment_translate"
            )(x)
        if augment_zoom:
            x = layers.RandomZoom(augment_zoom, fill_mode="reflect", seed=seed, name="augment_zoom")(x)
        if augment_contrast:
            x = layers.RandomContrast(augment_contrast, seed=seed, name="augment_contrast")(x)

    pool = layers.MaxPooling2D if pooling == "max" else layers.AveragePooling2D
    for b, (block_filters, convs) in enumerate(zip(filters, convs_per_block), start=1):
        for c in range(1, convs + 1):
            x = layers.Conv2D(
                block_filters,
                kernel_size,
                padding=padding,
                use_bias=not batch_norm,
                kernel_regularizer=regularizer,
                activation=None if batch_norm else "relu",
                name=f"block{b}_conv{c}",
            )(x)
            if batch_norm:
                x = FusedBatchNormalization(
                    momentum=batch_norm_momentum, synchronized=sync_batch_norm, name=f"block{b}_bn{c}"
                )(x)
                x = layers.ReLU(name=f"block{b}_relu{c}")(x)
        x = pool(2, name=f"block{b}_pool")(x)

    x = layers.GlobalAveragePooling2D(name="gap")(x) if head == "global_average" else layers.Flatten(name="flatten")(x)
    for i, units in enumerate(dense_units, start=1):
        if dropout:
            x = layers.Dropout(dropout, seed=seed, name=f"head_dropout{i}")(x)
        x = layers.Dense(units, activation="relu", kernel_regularizer=regularizer, name=f"head_dense{i}")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    # Softmax in float32 even under mixed precision: probabilities must sum to one.
    outputs = layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=regularizer, dtype="float32", name="probabilities"
    )(x)
    model = keras.Model(inputs, outputs, name="frame_cnn")
    return FlipAveraged(model, name="frame_cnn_tta") if test_time_flip else model


class FusedBatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernel where it can be.

    Keras 3 normalises in separate elementwise passes (moments, scale, shift,
    and as many again for the gradients); on a CPU that was a quarter of the
    frame CNN's training step (docs/benchmarks.md). `tf.nn.fused_batch_norm`
    does the same arithmetic in one oneDNN kernel. Same variables, same
    statistics (the moving variance uses the biased batch variance, as Keras
    does). Where batch statistics must be summed over replicas
    (`synchronized=True` under a strategy with several replicas), and for
    anything but 4-D channels-last inputs, it is Keras' own layer.
    """

    def _fusable(self, inputs, mask):
        return (mask is None and not self.renorm and self.scale and self.center and len(inputs.shape) == 4
                and self.axis in (-1, 3) and self.epsilon > 1.001e-5)

    def call(self, inputs, training=None, mask=None):
        import tensorflow as tf  # reelml runs Keras on the TensorFlow backend

        batch_stats = bool(training) and self.trainable
        replicas = tf.distribute.get_replica_context()
        across_replicas = replicas is None or replicas.num_replicas_in_sync > 1
        if not self._fusable(inputs, mask) or (batch_stats and self.synchronized and across_replicas):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)
        if not batch_stats:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, data_format="NHWC", is_training=False)
            return tf.cast(y, self.compute_dtype)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, self.gamma, self.beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)  # the kernel returns the unbiased variance
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)


class ResizeIfNeeded(layers.Resizing):
    """`keras.layers.Resizing` that passes frames already at the target size through untouched.

    Training batches arrive at `input_size` (the input pipeline resizes them), so
    the training step has no resize op, and stays XLA-compilable: antialiased
    resizing has no XLA kernel. Frames of any other size are resized. Where the
    size is only known at run time (a serving signature taking any size), the
    check runs in the graph, so frames sent at the model's size skip the resize.
    """

    def call(self, inputs):
        height, width = inputs.shape[-3], inputs.shape[-2]
        if height == self.height and width == self.width:
            return inputs
        if height is not None and width is not None:
            return super().call(inputs)
        size = keras.ops.shape(inputs)
        at_size = keras.ops.logical_and(size[-3] == self.height, size[-2] == self.width)
        out = keras.ops.cond(at_size, lambda: inputs, lambda: super(ResizeIfNeeded, self).call(inputs))
        return keras.ops.reshape(out, (-1, self.height, self.width, inputs.shape[-1]))


class FlipAveraged(keras.Model):
    """In inference, averages a classifier's probabilities for a frame and its mirror image.

    Training calls the classifier once, as it is; only inference (training=False,
    the exported signatures) pays for the second, mirrored pass.

    Args:
        classifier: a `keras.Model` from frames `(batch, height, width, 3)` to
            probabilities `(batch, num_classes)`.
    """

    def __init__(self, classifier, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier

    def call(self, frames, training=False):
        probabilities = self.classifier(frames, training=training)
        if training:
            return probabilities
        mirrored = self.classifier(keras.ops.flip(frames, axis=2), training=False)
        return (probabilities + mirrored) / 2.0
