"""Pure Keras architectures: no files, no MLflow, no CLI.

`MODELS` maps the `model.name` of a config to the function that builds it.
"""

from models.frame_cnn import build_frame_cnn

MODELS = {
    "frame_cnn": build_frame_cnn,
}
