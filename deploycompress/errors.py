"""Errors a user can act on. The CLI turns each into one line and exit code 2."""
import re

_TERMINAL_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, for a one-line error; its type name when the message
    is empty (`raise RuntimeError()` in a user's forward: indexing the empty split raised IndexError).
    Terminal colour codes are dropped (torch.export colours its step names: '[96mThis is step 1/3')."""
    lines = _TERMINAL_ESCAPES.sub("", str(exc)).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


class UserError(Exception):
    """Bad input or an unmet request: the message is the whole story, no traceback needed."""


class TargetUnreachable(UserError):
    """The measured speedup target cannot be met; carries the best speedup that was measured."""

    def __init__(self, message: str, best_speedup: float | None = None):
        super().__init__(message)
        self.best_speedup = best_speedup
