"""One package per task, each following the contract in `training/tasks/base.py`.

`TASKS` maps a config's `task` to its `Task`: a plain dict, read top to bottom.
"""

from training.tasks import autoencoder, dialogue, frames, recommender

TASKS = {
    "frames": frames.TASK,
    "recommender": recommender.TASK,
    "autoencoder": autoencoder.TASK,
    "dialogue": dialogue.TASK,
}
