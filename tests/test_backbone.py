"""Pretrained backbones: each application's preprocessing inside the model, freezing and fine-tuning by update
scale, weights from a file, an export that reloads without reelml, and `imagenet` without network (exit 2)."""

from __future__ import annotations

import types
import typing

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import MODELS
from models.backbone import (BACKBONES, MIN_INPUT_SIZE, BackboneWeightsError, UpdateScale, build_backbone,
                             set_backbone_update_scale)
from training.config import load_config
from training.config.frames import BACKBONE_KEYS, BACKBONE_MIN_INPUT_SIZE, FrameCNNModel
from training.errors import UserError

from conftest import CONFIGS, classify_without_reelml, run_cli, smoke_overrides

# What each family's first layer must see, from [0, 255] pixels: Keras' documented preprocessing.
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
EXPECTED_INPUT = {
    "mobilenet_v3_small": lambda x: x / 127.5 - 1.0,
    "mobilenet_v3_large": lambda x: x / 127.5 - 1.0,
    "resnet50_v2": lambda x: x / 127.5 - 1.0,  # keras.applications.resnet_v2.preprocess_input ("tf" mode)
    "efficientnet_v2_b0": lambda x: (x / 255.0 - MEAN) / STD,
    "convnext_tiny": lambda x: (x / 255.0 - MEAN) / STD,
}


def _features_model(model):
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def test_registry_and_config_name_the_same_backbones():
    assert MODELS["backbone"] is build_backbone
    literal = typing.get_args(FrameCNNModel.model_fields["backbone"].annotation)
    names = next(typing.get_args(a) for a in literal if a is not type(None))
    assert set(names) == set(BACKBONES) == set(EXPECTED_INPUT)
    assert BACKBONE_MIN_INPUT_SIZE == MIN_INPUT_SIZE
    # Every argument of the builder is a `model` key (but what the task adds), and every backbone-only key is the
    # builder's or the schedule's.
    import inspect

    takes = set(inspect.signature(build_backbone).parameters) - {"num_classes", "l2", "seed"}
    assert takes <= set(FrameCNNModel.model_fields)
    assert set(BACKBONE_KEYS) - takes == {"freeze_epochs", "fine_tune_lr_scale"}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_backbone_takes_raw_pixels_and_applies_its_own_preprocessing(name):
    """Any frame size in, probabilities out; the backbone's first layer sees pixels scaled as its family expects."""
    model = build_backbone(num_classes=4, backbone=name, input_size=32, augment=False)
    x = np.random.default_rng(0).uniform(0, 255, (2, 40, 50, 3)).astype("float32")
    probs = keras.ops.convert_to_numpy(model(x, training=False))
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)

    features = _features_model(model)
    # What reaches the application in the outer graph (no augmentation here), and its first layer past preprocessing.
    before = "preprocess" if BACKBONES[name].preprocessing == "tf" else "resize"
    into_backbone = keras.Model(model.input, model.get_layer(before).output)
    first = next(layer for layer in features.layers
                 if not isinstance(layer, (keras.layers.InputLayer, keras.layers.Rescaling, keras.layers.Normalization)))
    seen_by_first = keras.Model(features.input, first.input)
    at_size = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    pre = keras.ops.convert_to_numpy(into_backbone(at_size))
    if BACKBONES[name].preprocessing == "inside":
        np.testing.assert_array_equal(pre, at_size)  # raw pixels reach the application, which scales them itself
    seen = keras.ops.convert_to_numpy(seen_by_first(pre))
    np.testing.assert_allclose(seen, EXPECTED_INPUT[name](at_size), rtol=1e-4, atol=1e-4)
    # Exactly the application's parameters and the softmax layer's.
    channels = features.output.shape[-1]
    assert model.count_params() == features.count_params() + (channels + 1) * 4


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_imagenet_file_names_are_the_ones_keras_downloads(name, monkeypatch):
    """`BACKBONES` names the file Keras caches, so the offline check looks for the right one."""
    from keras.src.utils import file_utils

    asked = {}

    def record(fname, origin, **kwargs):
        asked.update(fname=fname, origin=origin)
        raise RuntimeError("recorded")

    monkeypatch.setattr(file_utils, "get_file", record)
    with pytest.raises(RuntimeError, match="recorded"):
        build_backbone(num_classes=2, backbone=name, weights="imagenet", input_size=32)
    assert asked == {"fname": BACKBONES[name].imagenet_file, "origin": BACKBONES[name].imagenet_url}


def _one_step(model, optimizer, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))


@pytest.mark.parametrize("make_optimizer", [lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.5),
                                            lambda: keras.optimizers.SGD(1e-2, momentum=0.9)], ids=["adamw", "sgd"])
def test_update_scale_freezes_and_slows_the_backbone_whatever_the_optimizer(make_optimizer):
    """Scale 0: the backbone stays put, weight decay included, while the head learns; scale 0.1: a tenth of the step."""
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32"))
    y = tf.constant([0, 1, 2, 0])
    deltas = {}
    for scale in (1.0, 0.1, 0.0):
        keras.utils.set_random_seed(7)
        model = build_backbone(num_classes=3, backbone="mobilenet_v3_small", input_size=32, augment=False, dropout=0.0)
        features = _features_model(model)
        optimizer = make_optimizer()
        optimizer.build(model.trainable_variables)
        set_backbone_update_scale(model, scale)
        before = [v.numpy().copy() for v in features.trainable_variables]
        head_before = model.get_layer("probabilities").kernel.numpy().copy()
        _one_step(model, optimizer, x, y)  # eagerly: tracing the step thrice costs more than running it
        deltas[scale] = [v.numpy() - b for v, b in zip(features.trainable_variables, before)]
        assert not np.allclose(model.get_layer("probabilities").kernel.numpy(), head_before)  # the head always learns
    assert all(isinstance(v.constraint, UpdateScale) for v in features.trainable_variables)
    assert all(np.all(d == 0) for d in deltas[0.0])  # frozen exactly, decay and all
    moved = [i for i, d in enumerate(deltas[1.0]) if np.abs(d).max() > 1e-6]
    assert moved
    for i in moved:
        np.testing.assert_allclose(deltas[0.1][i], 0.1 * deltas[1.0][i], rtol=1e-3, atol=1e-7)


def _data(classes=3):
    return types.SimpleNamespace(class_names=[f"c{i}" for i in range(classes)])


def _backbone_cfg(*overrides):
    return load_config(CONFIGS / "smoke" / "frames_backbone.yaml", ["tracking.enabled=false", *overrides])


def test_a_missing_or_unfitting_weights_file_is_a_user_error(tmp_path):
    from training.tasks.frames.model import build_model

    with pytest.raises(UserError, match=r"model.weights `.*nowhere.weights.h5`: no such file"):
        build_model(_backbone_cfg(f"model.weights={tmp_path / 'nowhere.weights.h5'}"), _data())
    other = keras.applications.MobileNetV3Large(include_top=False, weights=None, input_shape=(32, 32, 3))
    other.save_weights(tmp_path / "large.weights.h5")
    with pytest.raises(UserError, match=r"model.weights `.*large.weights.h5`: not weights of `mobilenet_v3_small`"):
        build_model(_backbone_cfg(f"model.weights={tmp_path / 'large.weights.h5'}"), _data())
    (tmp_path / "junk.weights.h5").write_text("not hdf5")
    with pytest.raises(UserError, match=r"model.weights `.*junk.weights.h5`"):
        build_model(_backbone_cfg(f"model.weights={tmp_path / 'junk.weights.h5'}"), _data())
    with pytest.raises(BackboneWeightsError):  # the builder's own error, for callers without our config
        build_backbone(num_classes=2, weights=str(tmp_path / "large.weights.h5"), input_size=32)


def test_config_checks_name_the_key():
    from training.errors import ConfigError

    for overrides, key in [(["model.backbone=null"], "model.backbone"), (["model.input_size=16"], "model.input_size"),
                           (["model.weights=weights.npz"], "model.weights"),
                           (["model.name=frame_cnn"], "model.backbone")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            _backbone_cfg(*overrides)


def test_imagenet_check_finds_the_cache_and_refuses_without_network(tmp_path, monkeypatch):
    from training.tasks.frames import model as frames_model

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for var in ("https_proxy", "HTTPS_PROXY"):  # every download goes through a proxy that is not there
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    problem = frames_model.imagenet_weights_problem("convnext_tiny", timeout=2)
    assert problem and "no network" in problem
    cached = tmp_path / "keras" / "models" / BACKBONES["convnext_tiny"].imagenet_file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert frames_model.imagenet_weights_problem("convnext_tiny") is None


def test_imagenet_without_network_fails_before_training_with_exit_2(sample_frames, tmp_path):
    env = {"KERAS_HOME": str(tmp_path / "keras"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "no_proxy": "", "NO_PROXY": "", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    result = run_cli("train", CONFIGS / "smoke" / "frames_backbone.yaml", "--set", "model.weights=imagenet",
                     "--set", f"data.sample_dir={sample_frames.parent}", cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reelml train: error: model.weights `imagenet`"), result.stderr[-3000:]
    assert "no network" in lines[0] and "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in lines[0]
    assert "Epoch" not in result.stdout and not (tmp_path / "runs" / "frames-backbone-smoke" / "checkpoints").exists()


class _Recorder(keras.callbacks.Callback):
    """The backbone's weights (all, trainable, the rest) and the head's, at the start and end of every epoch."""

    def __init__(self, model):
        super().__init__()
        self.classifier, self.seen = model, {}

    def _snapshot(self, when, epoch):
        features = _features_model(self.classifier)
        self.seen[when, epoch] = {
            "all": [w.copy() for w in features.get_weights()],
            "trainable": [v.numpy().copy() for v in features.trainable_variables],
            "frozen": [v.numpy().copy() for v in features.non_trainable_variables],  # BN statistics, scale, offset
            "head": [w.copy() for w in self.classifier.get_layer("probabilities").get_weights()],
        }

    def on_epoch_begin(self, epoch, logs=None):
        self._snapshot("begin", epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._snapshot("end", epoch)


@pytest.fixture
def recorded(monkeypatch):
    """Every frames run's `_Recorder`, in order (added after the task's own callbacks)."""
    from training.tasks.frames import FramesTask

    recorders = []
    original = FramesTask.epoch_callbacks

    def with_recorder(cfg, model, data, tracker):
        recorders.append(_Recorder(model))
        return [*original(cfg, model, data, tracker), recorders[-1]]

    monkeypatch.setattr(FramesTask, "epoch_callbacks", staticmethod(with_recorder))
    return recorders


def _weights_file(workdir):
    """A locally built MobileNetV3Small's weights, saved as `backbone.save_weights` does.

    Its batch norm statistics are set from one batch first: with the initial ones (mean 0, variance 1) a random
    MobileNetV3's features in inference mode are ~1e-11, its gradients too, and fine-tuning would barely move it.
    """
    local = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    norms = [layer for layer in local.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0  # the moving statistics become this batch's
    local(np.random.default_rng(0).uniform(0, 255, (64, 32, 32, 3)).astype("float32"), training=True)
    for layer in norms:
        layer.momentum = 0.999
    local.save_weights(workdir / "mnv3s.weights.h5")
    return local, workdir / "mnv3s.weights.h5"


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_backbone_from_a_weights_file_freezes_then_fine_tunes_and_exports(sample_frames, workdir, recorded):
    from training.train import train

    local, path = _weights_file(workdir)
    cfg = load_config(CONFIGS / "smoke" / "frames_backbone.yaml", smoke_overrides(sample_frames, workdir) + [
        f"model.weights={path}", "model.freeze_epochs=1", "train.epochs=2"])
    result = train(cfg)

    assert len(result.history) == 2
    seen = recorded[0].seen
    assert _same(seen["begin", 0]["all"], local.get_weights())  # from the file, BN statistics included
    assert _same(seen["end", 0]["all"], seen["begin", 0]["all"])  # frozen epoch: nothing of the backbone moved
    assert not _same(seen["end", 0]["head"], seen["begin", 0]["head"])  # while the head learned
    assert not _same(seen["end", 1]["trainable"], seen["end", 0]["trainable"])  # then the backbone fine-tuned
    assert _same(seen["end", 1]["frozen"], seen["begin", 0]["frozen"])  # its batch norm frozen throughout

    # The export (checked by export.verify on the way) reloads where reelml cannot be imported, and answers as the model.
    assert (result.export_dir / "saved_model.pb").exists()
    model = recorded[0].classifier
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    want = keras.ops.convert_to_numpy(model(pixels.astype("float32"), training=False))
    got = classify_without_reelml(result.export_dir, pixels, workdir)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_resumed_run_ends_as_an_uninterrupted_one(sample_frames, workdir, recorded):
    """Killed while fine-tuning, the same command resumes in the right phase, from the checkpoint's weights
    (the update scale starts again from them, not from the weights file), and ends with the same backbone."""
    from training.train import train

    _, path = _weights_file(workdir)
    overrides = smoke_overrides(sample_frames, workdir) + [f"model.weights={path}", "model.freeze_epochs=1",
                                                           "train.epochs=3", "export.enabled=false"]
    train(load_config(CONFIGS / "smoke" / "frames_backbone.yaml", overrides + ["name=whole"]))
    killed = load_config(CONFIGS / "smoke" / "frames_backbone.yaml", overrides + ["name=killed"])

    def kill_after_epoch_2(epoch, logs):
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train(killed, on_epoch=kill_after_epoch_2)
    assert len(train(killed).history) == 3

    whole, first_try, resumed = recorded
    assert set(resumed.seen) == {("begin", 2), ("end", 2)}  # only the last epoch ran again
    assert _same(resumed.seen["begin", 2]["all"], first_try.seen["end", 1]["all"])
    for key in ("trainable", "head"):
        for a, b in zip(resumed.seen["end", 2][key], whole.seen["end", 2][key]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_schedule_reaches_a_backbone_behind_test_time_flip():
    from training.tasks.frames.model import BackboneSchedule

    model = build_backbone(num_classes=2, input_size=32, test_time_flip=True)
    scales = {id(v.constraint.scale): v.constraint.scale for v in model.trainable_variables
              if isinstance(v.constraint, UpdateScale)}
    assert len(scales) == 1
    schedule = BackboneSchedule(model, freeze_epochs=2, lr_scale=0.25)
    for epoch, want in [(0, 0.0), (1, 0.0), (2, 0.25), (5, 0.25)]:  # the phase follows the epoch, resumed or not
        schedule.on_epoch_begin(epoch)
        assert float(next(iter(scales.values())).numpy()) == want
