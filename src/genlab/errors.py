"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""


class GenlabError(Exception):
    """Bad input: a params key, a file or a value that is not what was expected."""


class ConfigError(GenlabError):
    """An invalid params file or key."""
