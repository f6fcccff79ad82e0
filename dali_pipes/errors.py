"""User-facing errors: one line that names the file or option and says how to fix it.

Entry points (CLI, benchmarks) catch :class:`DaliTrainError` and print ``error: <message>`` with a non-zero exit
instead of a traceback; anything else escaping is a bug in this project, not a user mistake.
"""


class DaliTrainError(Exception):
    """Base of every error caused by user input (files, options, environment)."""


class DataError(DaliTrainError):
    """Missing, corrupt, unsafe or wrongly laid out data on disk."""


class ConfigError(DaliTrainError, ValueError):
    """An invalid option or augmentation recipe value."""


class DataWarning(UserWarning):
    """Data that was skipped, with the file named (a corrupt image, a name DALI cannot open). Entry points print
    it as one ``warning: <message>`` line; Python's default adds the warning's source file and line."""
