"""One module per task: its data pipeline, loss and metrics, serving signatures and report.

`TASKS` maps a config's `task` to its module.
"""

from training.tasks import autoencoder, dialogue, frames, recommender

TASKS = {
    "frames": frames,
    "recommender": recommender,
    "autoencoder": autoencoder,
    "dialogue": dialogue,
}
