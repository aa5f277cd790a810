"""Errors that are the user's to fix: the CLI prints them in one message and exits 2."""


class UserError(Exception):
    """A problem with the user's input (config, path, file, ID), worded for the user."""


class ConfigError(UserError):
    """The run config is not valid: the message names the file or dotted key."""


class Preempted(KeyboardInterrupt):
    """SIGTERM arrived (a scheduler preempting the job) and training stopped after checkpointing."""


class Stopped(Exception):
    """Training was stopped on purpose before its last epoch (a sweep pruned the trial); the MLflow run ends KILLED.

    Args:
        reason: why, in words; logged as the run's `reelml.stopped` tag.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Diverged(UserError):
    """The training loss became NaN or infinite."""
