"""Errors galmock reports to users: each message names the file, the field and the value."""


class GalmockError(Exception):
    """A problem with the user's input or environment; the CLI prints it and exits non-zero."""


class ConfigError(GalmockError):
    """An invalid job file or override."""


class InputError(GalmockError):
    """An unreadable, corrupt or physically invalid input (snapshot, table, catalog spec)."""


class NotImplementedStageError(GalmockError):
    """A pipeline stage that does not exist yet."""
