"""The one base class for errors a user can act on (bad option, config key, file, run, URI).

Each subpackage raises its own subclass (`ConfigError`, `DatasetError`, `InferenceError`, ...)
with a message that names the thing at fault and says what to do. The jobs print such an
error as one line and exit with code 2; any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in what the user asked for, described by the message alone (no traceback)."""
