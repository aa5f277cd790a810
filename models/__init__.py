"""Pure Keras architectures: no files, no MLflow, no CLI.

`MODELS` maps the `model.name` of a config to the function that builds it.
"""

from models.frame_cnn import build_frame_cnn
from models.ncf import build_gmf, build_mlp, build_neumf, build_seed_cf

MODELS = {
    "frame_cnn": build_frame_cnn,
    "gmf": build_gmf,
    "mlp": build_mlp,
    "neumf": build_neumf,
    "seed_cf": build_seed_cf,
}
