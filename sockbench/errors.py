"""The one exception type that the command line turns into a single clear line."""

__all__ = ["UsageError", "SockbenchError"]


class SockbenchError(Exception):
    """An error the user can act on: printed as one line, no traceback.

    ``exit_code`` is the process status the command line exits with.
    """

    exit_code = 1

    def __init__(self, message, exit_code=None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(SockbenchError):
    """Bad input on the command line (an unknown name, a malformed size...)."""

    exit_code = 2
