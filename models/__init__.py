"""Pure Keras architectures: no files, no MLflow, no CLI.

`MODELS` maps the `model.name` of a config to the function that builds it.
"""

from models.autoencoder import build_conv_autoencoder, build_dense_autoencoder
from models.backbone import build_backbone
from models.dialogue_rnn import build_dialogue_rnn
from models.frame_cnn import build_frame_cnn
from models.ncf import build_gmf, build_mf, build_mlp, build_neumf, build_seed_cf

MODELS = {
    "backbone": build_backbone,
    "conv_autoencoder": build_conv_autoencoder,
    "dense_autoencoder": build_dense_autoencoder,
    "dialogue_rnn": build_dialogue_rnn,
    "frame_cnn": build_frame_cnn,
    "gmf": build_gmf,
    "mf": build_mf,
    "mlp": build_mlp,
    "neumf": build_neumf,
    "seed_cf": build_seed_cf,
}
