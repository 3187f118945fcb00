"""Errors a user can act on. The CLI turns each into one line and exit code 2."""


class UserError(Exception):
    """Bad input or an unmet request: the message is the whole story, no traceback needed."""


class TargetUnreachable(UserError):
    """The measured speedup target cannot be met; carries the best speedup that was measured."""

    def __init__(self, message: str, best_speedup: float | None = None):
        super().__init__(message)
        self.best_speedup = best_speedup
