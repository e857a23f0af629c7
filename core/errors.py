"""Exceptions that carry a message a user can act on; the CLI prints them without a traceback."""


class JointTrainError(Exception):
    """Base class: the message names the problem and, where possible, the fix."""


class ConfigError(JointTrainError, ValueError):
    """A config value, key or component name is invalid."""


class DataError(JointTrainError, ValueError):
    """Input data is missing, malformed or inconsistent with the tasks."""


class CheckpointError(JointTrainError):
    """A checkpoint or model directory is missing, corrupt or does not match the model."""


class NonFiniteLossError(JointTrainError, FloatingPointError):
    """A task's loss (or gradient) became NaN/Inf too many steps in a row."""
