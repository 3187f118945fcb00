"""Progress bars that suit both a terminal and a CI log.

On a terminal, a live tqdm bar. In a log (stderr not a TTY) the same bar redraws at most every few
seconds, so a long step still shows it is alive without flooding the log with carriage returns.
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(total: int, desc: str, unit: str = "it") -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                mininterval=0.1 if interactive else 5.0, file=sys.stderr)
