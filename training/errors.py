"""Errors that are the user's to fix: the CLI prints them in one message and exits 2."""


class UserError(Exception):
    """A problem with the user's input (config, path, file, ID), worded for the user."""


class ConfigError(UserError):
    """The run config is not valid: the message names the file or dotted key."""


class Preempted(KeyboardInterrupt):
    """SIGTERM arrived (a scheduler preempting the job) and training stopped after checkpointing."""
