"""Checkpoints of a run: everything a resumed run needs, saved together, and the checks on reading them back.

A damaged checkpoint (truncated or unreadable files) is skipped for the previous
one; a checkpoint that reads fine but holds another model than the config builds
is an error (`CheckpointMismatch`), never silently replaced by untrained weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import tensorflow as tf

from training.errors import UserError


class CheckpointMismatch(UserError):
    """A checkpoint that reads fine holds another model than the config builds."""

    def __init__(self, path, detail):
        self.path, self.detail = path, detail
        super().__init__(f"{path}: this checkpoint holds a different model than the config builds ({detail})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Checkpoints:
    """Model, optimizer, RNG and metric state, epoch, step and history, saved together; the last good one is restored.

    A checkpoint is taken at the end of an epoch, or mid-epoch when the job is
    preempted (`step` > 0 then). Only the chief's checkpoints are kept: under
    `MultiWorkerMirroredStrategy` every worker takes part in a save (its variables
    may need collective reads), so the others write to a scratch folder they delete
    at once, and all of them restore from the chief's folder. A checkpoint is
    written in full before the folder's index points to it, so a crash mid-save
    leaves the previous one in use; one that cannot be read is skipped for an older one.
    """

    def __init__(self, directory, model, optimizer, keep, chief=True, metrics=()):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")  # epochs finished
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")  # steps into the next epoch
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
        # Keras keeps dropout and augmentation RNG state in seed-generator variables that tf.train.Checkpoint
        # does not reach through the model: saved by hand, so a resumed epoch draws the same masks.
        rng = [v for v in model.variables if v.path.endswith("seed_generator_state")]
        metric_state = [v for m in metrics for v in m.variables]
        self._ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch, step=self.step,
                                         history=self.history, rng=rng, metrics=metric_state)
        self._best = tf.train.Checkpoint(model=model)
        self._optimizer = optimizer
        directory = Path(directory)
        self.chief = chief
        write_dir = directory if chief else directory.parent / f".worker-{os.getpid()}"
        self._scratch = None if chief else write_dir
        self._manager = tf.train.CheckpointManager(self._ckpt, str(write_dir / "last"), max_to_keep=keep)
        self._best_manager = tf.train.CheckpointManager(self._best, str(write_dir / "best"), max_to_keep=1)
        self._directory, self._keep = directory, keep  # every worker reads the chief's checkpoints
        self.saved = None  # (epoch, step) of the newest checkpoint this process wrote or read

    def restore(self) -> tuple[list[dict], int]:
        """Restores the newest readable checkpoint; returns the history of finished epochs and the steps
        already done into the next one ([] and 0 when there is none).

        A damaged checkpoint (truncated or unreadable files) is skipped for an older one. A checkpoint
        that reads fine but does not fit this model (another architecture, precision or optimizer) stops.

        Raises:
            CheckpointMismatch: the checkpoint holds a different model.
        """
        reader = self._manager if self.chief else tf.train.CheckpointManager(self._ckpt, str(self._directory / "last"), self._keep)
        for path in reversed(reader.checkpoints):
            try:
                self._ckpt.read(path).assert_existing_objects_matched().expect_partial()  # save_counter: not ours
            except (ValueError, AssertionError) as e:  # read fine, but shapes or objects differ from this model's
                raise CheckpointMismatch(path, _first_line(e)) from None
            except (tf.errors.OpError, IndexError, UnicodeDecodeError) as e:  # truncated or damaged files
                print(f"Checkpoint {path} is damaged ({type(e).__name__}: {_first_line(e)[:200]}); trying an older one",
                      flush=True)
                continue
            epoch, step = int(self.epoch.numpy()), int(self.step.numpy())
            self.saved = (epoch, step)
            print(f"Resuming from {path} (epoch {epoch}" + (f", step {step} of the next" if step else "") + ")", flush=True)
            return json.loads(self.history.numpy().decode()), step
        return [], 0

    def save(self, epoch: int, history: list[dict], step: int = 0):
        self.epoch.assign(epoch)
        self.step.assign(step)
        self.history.assign(json.dumps(history))
        self._manager.save(checkpoint_number=int(self._optimizer.iterations.numpy()))
        self._drop_scratch()
        self.saved = (epoch, step)

    def save_best(self, epoch: int):
        self._best_manager.save(checkpoint_number=epoch)
        self._drop_scratch()

    def restore_best(self) -> bool:
        """Restores the best epoch's weights (call `barrier` first on a cluster: the chief must be done saving)."""
        path = tf.train.latest_checkpoint(str(self._directory / "best"))
        if not path:
            return False
        try:
            self._best.read(path).expect_partial()
        except ValueError as e:
            raise CheckpointMismatch(path, _first_line(e)) from None
        except (tf.errors.OpError, IndexError, UnicodeDecodeError) as e:
            print(f"Best checkpoint {path} is damaged ({type(e).__name__}); keeping the last epoch's weights", flush=True)
            self._ckpt.read(tf.train.latest_checkpoint(str(self._directory / "last"))).expect_partial()  # undo a part-read
            return False
        return True

    def _drop_scratch(self):
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
