"""Errors a user can fix. Each message names the file, row or key at fault.

Every `HarnessError` ends a command with exit code 2 (a usage error) and one line on stderr;
anything else is a bug and keeps its traceback.
"""


class HarnessError(Exception):
    """A problem with the user's input (a file, a row, a key, a value)."""

    exit_code = 2


class ConfigError(HarnessError):
    """A training config key or value is wrong."""


class DataError(HarnessError):
    """The challenge data (CSV, images, cache) is missing or malformed."""


class SweepError(HarnessError):
    """A sweep file, sweep id or sweep state is wrong."""


class LaunchError(HarnessError):
    """The launch request cannot be carried out (GPUs, sweep id, options)."""


class DeviceError(HarnessError):
    """The run was handed a device (a GPU) its framework cannot use, or a bad device setting."""
