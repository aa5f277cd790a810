"""The frames export: its signatures (encoded images in, or decoded pixels; labels out) and what it records.

- `serving_default`: `images`, a string tensor `[n]` of encoded JPEG/PNG/GIF/BMP
  bytes of any size (decoded and resized inside);
- `classify_pixels`: `pixels`, uint8 `[n, size, size, 3]` (video frames, already decoded).

Both return `label` (string), `class_id` (int32), `confidence` (float32) and
`probabilities` (float32 `[n, classes]`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from training.tasks.images import decode_images, not_empty


def export_metadata(cfg, data, calibration=None) -> dict:
    """What `assets.extra/reelml.json` records for `reelml predict`: the class names."""
    return {"class_names": data.class_names}


def _outputs(model, pixels, class_names):
    pixels, n = not_empty(pixels)
    probabilities = model(pixels, training=False)[:n]
    class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return {
        "label": tf.gather(tf.constant(class_names), class_ids),
        "class_id": class_ids,
        "confidence": tf.reduce_max(probabilities, axis=-1),
        "probabilities": probabilities,
    }


def serving_endpoints(cfg, model, data, calibration=None):
    """What the export tracks (the model) and its signatures.

    Returns:
        `(model, {"serving_default": (fn, specs), "classify_pixels": (fn, specs)})`.
    """
    size = cfg.model.input_size
    class_names = data.class_names

    def classify_images(images):
        # Signatures do not check the shape of what they are given: say clearly what was expected.
        images = tf.ensure_shape(images, [None], name="images")
        return _outputs(model, decode_images(images, size), class_names)

    def classify_pixels(pixels):
        pixels = tf.ensure_shape(pixels, [None, None, None, 3], name="pixels")
        return _outputs(model, tf.cast(pixels, tf.float32), class_names)

    return model, {
        "serving_default": (classify_images, [tf.TensorSpec([None], tf.string, name="images")]),
        "classify_pixels": (classify_pixels, [tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")]),
    }


def verification_inputs(cfg, data):
    """A few real frames, as each signature takes them, to check the export against the model."""
    pixels = next(iter(data.train.unbatch().batch(4)))[0].numpy().astype(np.uint8)
    images = [tf.io.encode_png(p).numpy() for p in pixels]
    return {"serving_default": {"images": images}, "classify_pixels": {"pixels": pixels}}
