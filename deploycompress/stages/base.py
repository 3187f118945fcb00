"""A stage reads and writes one run directory through the shared RunContext."""
from __future__ import annotations

from ..context import RunContext


class Stage:
    name = "stage"
    outputs: tuple[str, ...] = ()  # files in the run directory this stage writes (hashed in the manifest)

    def run(self, ctx: RunContext) -> None:
        raise NotImplementedError

    def restore(self, ctx: RunContext) -> None:
        """Rebuild this stage's effect on the context from its outputs (used by --resume)."""
        raise NotImplementedError
