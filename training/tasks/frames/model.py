"""The frames model, its loss and its metrics: a classifier over `len(class_names)` classes.

`model.name: backbone` (a Keras application, `models/backbone.py`) adds what is
ours to check before training: that the backbone's weights can be had (a weights
file that fits, or ImageNet's in Keras' cache or downloadable), and the schedule
that freezes the backbone for `model.freeze_epochs` and then fine-tunes it at
`model.fine_tune_lr_scale` of the learning rate (`epoch_callbacks`).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import keras
import tensorflow as tf

from models import MODELS
from models.backbone import BACKBONES, BackboneWeightsError, set_backbone_update_scale
from training.config.frames import BACKBONE_KEYS
from training.errors import UserError


def build_model(cfg, data) -> keras.Model:
    """The `cfg.model.name` builder of `models.MODELS`, with one output per class of `data.class_names`.

    Args:
        cfg: the run config (`cfg.model`'s keys for `model.name` are passed on, with `train.l2` and `seed`).
        data: anything with `class_names`.

    Returns:
        The uncompiled Keras model: float32 pixels `[batch, size, size, 3]` -> probabilities `[batch, classes]`.

    Raises:
        UserError: `model.weights` cannot be had: a missing or unfitting file, or ImageNet's without network.
    """
    m = cfg.model
    if m.name != "backbone":
        params = m.model_dump(exclude={"name", *BACKBONE_KEYS})
        return MODELS[m.name](num_classes=len(data.class_names), l2=cfg.train.l2, seed=cfg.seed, **params)

    def build():  # the schedule's keys (`freeze_epochs`, `fine_tune_lr_scale`) are `epoch_callbacks`'
        return MODELS[m.name](
            num_classes=len(data.class_names), backbone=m.backbone, weights=m.weights, input_size=m.input_size,
            dropout=m.dropout, freeze_batch_norm=m.freeze_batch_norm, augment=m.augment,
            augment_translation=m.augment_translation, augment_zoom=m.augment_zoom,
            augment_contrast=m.augment_contrast, test_time_flip=m.test_time_flip, l2=cfg.train.l2, seed=cfg.seed)

    weights = m.weights
    if weights == "imagenet":
        problem = imagenet_weights_problem(m.backbone)
        if problem:
            raise UserError(_imagenet_advice(m.backbone, problem))
    elif weights is not None and not Path(weights).is_file():
        raise UserError(f"model.weights `{weights}`: no such file; give the path of a `.weights.h5` file of "
                        f"`{m.backbone}` (backbone.save_weights), `imagenet`, or null for random weights")
    try:
        return build()
    except BackboneWeightsError as e:
        raise UserError(f"model.weights `{weights}`: {e}; give a weights file of `{m.backbone}` "
                        "(model.backbone), `imagenet`, or null for random weights") from None
    except Exception as e:  # Keras' download failed after all (`URL fetch failure on ...`)
        if weights == "imagenet" and str(e).startswith("URL fetch failure"):
            raise UserError(_imagenet_advice(m.backbone, str(e).splitlines()[0][:300])) from None
        raise


def imagenet_weights_problem(backbone: str, timeout: float = 5.0) -> str | None:
    """Why Keras could not get `backbone`'s ImageNet weights now, or None when it can.

    They can be had when Keras' cache holds the file (`$KERAS_HOME/models/`, by
    default `~/.keras/models/`), or else when the download host answers within
    `timeout` seconds (through the proxy of `https_proxy`, as Keras' download
    goes). Without it Keras' own download would retry or hang before failing.

    Args:
        backbone: a key of `models.backbone.BACKBONES`.
        timeout: seconds to wait for the download host.

    Returns:
        None, or the reason in a few words (`the download host did not answer (...)`).
    """
    spec = BACKBONES[backbone]
    if cached_imagenet_file(backbone) is not None:
        return None
    try:
        with urllib.request.urlopen(urllib.request.Request(spec.imagenet_url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError as e:
        return f"{spec.imagenet_url} answered HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"no network to download them ({spec.imagenet_url}: {reason})"


def keras_cache_dir() -> Path:
    """Where Keras caches downloads (`$KERAS_HOME`, else `~/.keras`, else `/tmp/.keras`), as `keras.utils.get_file` picks it."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"])
    home = Path(os.path.expanduser("~"))
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def cached_imagenet_file(backbone: str) -> Path | None:
    """The ImageNet weights file of `backbone` in Keras' cache, or None when it is not there."""
    name = BACKBONES[backbone].imagenet_file
    for folder in (keras_cache_dir(), Path("/tmp/.keras")):  # get_file falls back to /tmp where the cache is read-only
        if (folder / "models" / name).is_file():
            return folder / "models" / name
    return None


def _imagenet_advice(backbone: str, problem: str) -> str:
    spec = BACKBONES[backbone]
    app = spec.application.__name__
    return (f"model.weights `imagenet`: Keras cannot get the ImageNet weights of `{backbone}`: {problem}. "
            f"On a machine with internet run `python -c \"import keras; keras.applications.{app}(include_top=False, "
            f"weights='imagenet')\"`, then copy ~/.keras/models/{spec.imagenet_file} into {keras_cache_dir() / 'models'} here "
            f"(or set model.weights to that file's path), or set model.weights to a `.weights.h5` file of the backbone, "
            "or to null for random weights")


class BackboneSchedule(keras.callbacks.Callback):
    """Freezes the backbone for the first `freeze_epochs` epochs, then fine-tunes it at `lr_scale` of the learning rate.

    The state is set from the epoch number at the start of every epoch, so a
    resumed run (from any epoch, or in the middle of one) is in the phase that
    epoch belongs to.

    Args:
        model: the classifier `models.backbone.build_backbone` made.
        freeze_epochs: int, epochs (0-based `epoch < freeze_epochs`) that train the head only.
        lr_scale: float, the backbone's share of the learning rate afterwards.
    """

    def __init__(self, model, freeze_epochs: int, lr_scale: float):
        super().__init__()
        self._classifier, self.freeze_epochs, self.lr_scale = model, freeze_epochs, lr_scale
        self._phase = None

    def on_epoch_begin(self, epoch, logs=None):
        frozen = epoch < self.freeze_epochs
        set_backbone_update_scale(self._classifier, 0.0 if frozen else self.lr_scale)
        if frozen != self._phase:
            print(f"Backbone frozen for the first {self.freeze_epochs} epochs: training the head only" if frozen else
                  f"Backbone training at {self.lr_scale:g} x the learning rate", flush=True)
            self._phase = frozen


def epoch_callbacks(cfg, model, data, tracker) -> list:
    """`model.name: backbone`: the freeze-then-fine-tune schedule (`BackboneSchedule`); else none."""
    if cfg.model.name != "backbone":
        return []
    return [BackboneSchedule(model, cfg.model.freeze_epochs, cfg.model.fine_tune_lr_scale)]


def make_loss(cfg, data):
    """Per-example cross-entropy (label smoothing needs one-hot targets).

    Returns:
        `loss(labels, probabilities [batch, classes])` -> losses `[batch]`; labels are int `[batch]`, or class
        shares `[batch, classes]` (mixed training batches, `data.mixup`/`data.cutmix`).
    """
    crossentropy = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing, reduction=None)
    num_classes = len(data.class_names)

    def loss(y_true, y_pred):
        if y_true.shape.rank == 2:
            return crossentropy(y_true, y_pred)
        return crossentropy(tf.one_hot(tf.cast(y_true, tf.int32), num_classes), y_pred)

    return loss


class Accuracy(keras.metrics.SparseCategoricalAccuracy):
    """Accuracy against int labels, or against the largest share of mixed labels `[batch, classes]`."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        if y_true.shape.rank == 2:
            y_true = tf.argmax(y_true, axis=-1)
        return super().update_state(y_true, y_pred, sample_weight)


def make_metrics(cfg, data) -> list:
    """Accuracy, the one metric of training, validation and test batches."""
    return [Accuracy(name="accuracy")]
