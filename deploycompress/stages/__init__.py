"""The pipeline's stages, in order: prune -> finetune -> shrink -> export -> profile."""
from .base import Stage
from .export import ExportStage
from .finetune import FinetuneStage
from .profile import ProfileStage
from .prune import PruneStage
from .shrink import ShrinkStage


def default_stages() -> list[Stage]:
    return [PruneStage(), FinetuneStage(), ShrinkStage(), ExportStage(), ProfileStage()]


__all__ = ["Stage", "default_stages", "PruneStage", "FinetuneStage", "ShrinkStage", "ExportStage", "ProfileStage"]
