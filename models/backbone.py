"""Backbone classifier: a Keras application (MobileNetV3, EfficientNetV2, ResNetV2, ConvNeXt) and a small head.

Frames of any size with pixel values in [0, 255] go in: the model resizes them,
augments them (training only) and applies the backbone's own preprocessing, so
training, evaluation and the exported SavedModel all take the same raw pixels.
The backbone starts from random weights, ImageNet's (`weights="imagenet"`,
downloaded once by Keras) or a weights file, and is followed by global average
pooling, dropout and a softmax layer.

Freezing and fine-tuning work without touching the training step: every
trainable variable of the backbone carries an `UpdateScale` constraint, which
the optimizer applies after each update and which scales that update (weight
decay included) by one shared factor. `set_backbone_update_scale(model, 0.0)`
freezes the backbone, `0.1` fine-tunes it at a tenth of the head's learning
rate, `1.0` trains it as the head. The compiled step, the optimizer and the
checkpoints stay the same throughout. The price: a frozen step costs what a
fine-tuning one does (the backbone's gradients are computed, its update
undone), and the constraints hold one more copy of the backbone's trainable
weights (not saved: neither in checkpoints nor in the export).

With pretrained weights the backbone's batch norm layers stay frozen for the
whole run (`freeze_batch_norm`), as Keras' transfer-learning guide advises.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers

from models.frame_cnn import FlipAveraged, ResizeIfNeeded

# Where Keras downloads ImageNet weights from, and the name of the file it caches in `~/.keras/models/`.
_KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One Keras application, as `build_backbone` uses it.

    Attributes:
        application: the `keras.applications` constructor.
        preprocessing: `"inside"` where the application rescales [0, 255] pixels itself
            (`include_preprocessing=True`); else `"tf"`: [0, 255] -> [-1, 1] here, as its
            `preprocess_input` does.
        imagenet_file: the file of ImageNet weights without the top (`include_top=False`) that
            Keras downloads and caches in `~/.keras/models/`.
        imagenet_url: where Keras downloads it from.
    """

    application: object
    preprocessing: str
    imagenet_file: str
    imagenet_url: str


def _backbone(application, preprocessing, folder, file):
    return Backbone(application, preprocessing, file, f"{_KERAS_APPLICATIONS_URL}{folder}/{file}")


# The smallest input every one of them takes (five stride-2 stages): 32 x 32.
MIN_INPUT_SIZE = 32

BACKBONES = {
    "mobilenet_v3_small": _backbone(keras.applications.MobileNetV3Small, "inside", "mobilenet_v3",
                                    "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    "mobilenet_v3_large": _backbone(keras.applications.MobileNetV3Large, "inside", "mobilenet_v3",
                                    "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    "efficientnet_v2_b0": _backbone(keras.applications.EfficientNetV2B0, "inside", "efficientnet_v2",
                                    "efficientnetv2-b0_notop.h5"),
    "resnet50_v2": _backbone(keras.applications.ResNet50V2, "tf", "resnet",
                             "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "convnext_tiny": _backbone(keras.applications.ConvNeXtTiny, "inside", "convnext", "convnext_tiny_notop.h5"),
}


class BackboneWeightsError(ValueError):
    """A weights file that cannot be read, or that holds another backbone's weights."""


def build_backbone(
    num_classes,
    backbone="mobilenet_v3_small",
    weights=None,
    input_size=224,
    dropout=0.2,
    freeze_batch_norm=None,
    augment=True,
    augment_translation=0.1,
    augment_zoom=0.1,
    augment_contrast=0.1,
    test_time_flip=False,
    l2=0.0,
    seed=None,
):
    """Builds a frame classifier on a Keras application.

    Args:
        num_classes: int, number of classes of the softmax output.
        backbone: str, a key of `BACKBONES`: `"mobilenet_v3_small"`,
            `"mobilenet_v3_large"`, `"efficientnet_v2_b0"`, `"resnet50_v2"` or
            `"convnext_tiny"`.
        weights: `None` (random initialisation), `"imagenet"` (Keras downloads
            them once into `~/.keras/models/`, or finds them there), or the path
            of a weights file of the same backbone: a `.weights.h5` written by
            `backbone.save_weights`, or the `.h5` file Keras downloads.
        input_size: int, every frame is resized to `input_size x input_size`
            (at least `MIN_INPUT_SIZE`).
        dropout: float, dropout rate before the softmax layer.
        freeze_batch_norm: bool, the backbone's batch norm layers are frozen
            for the whole run: they normalise with their stored statistics,
            never update them, and keep their scale and offset (Keras' advice
            for fine-tuning: a small batch's statistics would undo what the
            pretrained layers learned). `None`: `True` with pretrained weights,
            `False` from random initialisation (whose statistics must be
            learned; they then update even while the backbone is frozen).
        augment: bool, random flip, translation, zoom and contrast (training only).
        augment_translation: float, largest shift as a fraction of the frame.
        augment_zoom: float, largest zoom in or out as a fraction.
        augment_contrast: float, largest contrast change as a fraction.
        test_time_flip: bool, in inference average the probabilities of each
            frame and its mirror image.
        l2: float, L2 penalty on the head's kernel only (a pretrained backbone
            is not pulled towards zero).
        seed: int or None, seed of the augmentation and dropout layers.

    Returns:
        A `keras.Model` taking float frames of shape `(batch, height, width, 3)`
        with values in [0, 255] (any height and width) and returning class
        probabilities of shape `(batch, num_classes)`, in float32. Its
        backbone's updates are scaled by `set_backbone_update_scale` (1 at first).

    Raises:
        BackboneWeightsError: `weights` is a file that cannot be read or does
            not fit the backbone.

    Example:

    >>> model = build_backbone(num_classes=5, backbone="mobilenet_v3_small", input_size=32)
    >>> model(keras.ops.zeros((2, 100, 80, 3))).shape
    (2, 5)
    """
    if backbone not in BACKBONES:
        raise ValueError(f"`backbone` must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if input_size < MIN_INPUT_SIZE:
        raise ValueError(f"`input_size` must be at least {MIN_INPUT_SIZE} for a backbone, got {input_size}")
    spec = BACKBONES[backbone]
    if freeze_batch_norm is None:
        freeze_batch_norm = weights is not None

    inputs = keras.Input(shape=(None, None, 3), name="frames")
    x = ResizeIfNeeded(input_size, input_size, antialias=True, name="resize")(inputs)
    if augment:  # on [0, 255] pixels, before the backbone's preprocessing (RandomContrast clips to [0, 255])
        x = layers.RandomFlip("horizontal", seed=seed, name="augment_flip")(x)
        if augment_translation:
            x = layers.RandomTranslation(
                augment_translation, augment_translation, fill_mode="reflect", seed=seed, name="augment_translate"
            )(x)
        if augment_zoom:
            x = layers.RandomZoom(augment_zoom, fill_mode="reflect", seed=seed, name="augment_zoom")(x)
        if augment_contrast:
            x = layers.RandomContrast(augment_contrast, seed=seed, name="augment_contrast")(x)
    if spec.preprocessing == "tf":  # keras.applications.resnet_v2.preprocess_input: [0, 255] -> [-1, 1]
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
    options = {"include_preprocessing": True} if spec.preprocessing == "inside" else {}
    # The application keeps its own name: Keras derives the ImageNet file's name from it.
    features_model = spec.application(
        include_top=False, weights="imagenet" if weights == "imagenet" else None,
        input_shape=(input_size, input_size, 3), **options,
    )
    if weights not in (None, "imagenet"):
        _load_weights(features_model, weights, backbone)
    if freeze_batch_norm:
        # `trainable = False` is what runs a Keras 3 BatchNormalization in inference mode: a `training=False`
        # given where the backbone is called is overridden by the outer model's `training` (keras#20285).
        for layer in _nested_layers(features_model):
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
    _scale_updates(features_model)
    x = features_model(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    # Softmax in float32 even under mixed precision: probabilities must sum to one.
    outputs = layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=regularizer, dtype="float32", name="probabilities"
    )(x)
    model = keras.Model(inputs, outputs, name=f"{backbone}_classifier")
    return FlipAveraged(model, name=f"{backbone}_classifier_tta") if test_time_flip else model


def _nested_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):  # ConvNeXt's stem and downsampling blocks are Sequential models
            yield from _nested_layers(layer)


def _load_weights(features_model, path, backbone):
    """`features_model.load_weights(path)`, where a file of another backbone (or part of one) is an error."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            features_model.load_weights(path)
        except (ValueError, OSError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackboneWeightsError(f"not weights of `{backbone}` ({first[:300]})") from None
    # Keras loads what matches and only warns about the rest: a partial load is not a pretrained backbone.
    skipped = [w for w in caught if "freshly-initialized" in str(w.message) or "Skipping" in str(w.message)]
    if skipped:
        raise BackboneWeightsError(f"only part of `{backbone}`'s weights are in the file ({str(skipped[0].message)[:200]})")


class UpdateScale(keras.constraints.Constraint):
    """Scales every optimizer update of one variable by a shared factor: 0 freezes it, 1 leaves the update as it is.

    Keras optimizers apply a variable's constraint right after updating it. This
    one remembers the value before the update (`before`) and moves the variable
    only `scale` of the way from there, so the update (gradient step, momentum
    and weight decay alike) is scaled, whatever the optimizer: a learning rate
    of `scale` times the optimizer's for this variable.

    Args:
        scale: a shared scalar `keras.Variable` (float32), the factor.
        variable: the variable constrained; `before` starts at its value.
    """

    def __init__(self, scale, variable):
        self.scale = scale
        self.before = keras.Variable(keras.ops.convert_to_tensor(variable), trainable=False,
                                     name=f"{variable.name}_before_update")

    def __call__(self, w):
        w = self.before + keras.ops.cast(self.scale, w.dtype) * (w - self.before)
        self.before.assign(w)
        return w

    def sync(self, variable):
        """Starts from the variable's current value (after a checkpoint was restored into it)."""
        self.before.assign(variable)


def _scale_updates(features_model):
    scale = keras.Variable(1.0, trainable=False, dtype="float32", name="backbone_update_scale")
    for variable in features_model.trainable_variables:
        variable.constraint = UpdateScale(scale, variable)


def set_backbone_update_scale(model, scale: float) -> None:
    """Scales the updates of `model`'s backbone from now on: 0 freezes it, 0.1 is a tenth of the head's rate.

    Call it between steps (a callback's `on_epoch_begin`), never inside one. It
    also restarts every `UpdateScale` from the variable's current value, so call
    it after restoring a checkpoint and before training on.

    Args:
        model: a model built by `build_backbone` (or one holding it).
        scale: float in [0, 1].

    Example:

    >>> model = build_backbone(num_classes=3, input_size=32)
    >>> set_backbone_update_scale(model, 0.0)  # frozen: only the head learns
    """
    constrained = [(v, v.constraint) for v in model.trainable_variables if isinstance(v.constraint, UpdateScale)]
    if not constrained:
        raise ValueError("`model` has no backbone built by `build_backbone`")
    for shared in {id(c.scale): c.scale for _, c in constrained}.values():
        shared.assign(float(scale))
    for variable, constraint in constrained:
        constraint.sync(variable)
