"""Errors a user can act on. The CLI prints them as one line and exits with their `exit_code`."""


class GenlabError(Exception):
    """Bad input: a params key, a file or a value that is not what was expected (exit status 2)."""

    exit_code = 2


class ConfigError(GenlabError):
    """An invalid params file or key."""


class TrainingDiverged(GenlabError):
    """A loss or gradient became NaN or Inf; the last good training state is kept (exit status 3)."""

    exit_code = 3


class StorageError(GenlabError):
    """An output could not be written (e.g. the disk is full); the previous output is intact (exit status 1)."""

    exit_code = 1


class StageFailed(GenlabError):
    """A stage's worker process failed (a rank under torchrun); it printed its own error; exit with its status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
