"""i-SpaSP as a criterion (``--importance ispasp``), ALGORITHMS.md §3.

i-SpaSP is a selector: given a keep count s it returns the s hidden channels whose restriction best
reconstructs the consumer's output. A criterion has to return scores before the policy has chosen s,
so we run the selector at every width the policy can ask for (multiples of the channel multiple)
and rank channels by the smallest width at which they enter the selected set:

    score = 1 + (C - rank) / C   for a channel selected at some width (rank = order of entry),
    score = a_j / (max a + eps)  for a channel never selected (its aggregate activation, below 1).

Top-s of these scores is exactly the selector's set at the smallest width, and at every grid width
whose selected set contains the previous one (the usual case); where i-SpaSP's sets are not nested,
earlier entrants win. Within one width, new entrants are ordered by aggregate activation a_j, the
quantity i-SpaSP itself keeps by.

Our simplifications: blocks are scored on the dense prefix, in one shot (the paper prunes block by
block, feeding each block the already pruned prefix and fine-tuning between blocks); and groups
without a single consumer layer (residual stages) fall back to L2 magnitude, said once in the notes.
"""
from __future__ import annotations

import torch

from ..graph import ChannelGroup
from ..importance import Criterion, ScoringContext, criteria, magnitude_scores
from ..research.ispasp import ispasp_select
from .blocks import Block, consumer_view, prepare_blocks, width_grid

MAX_SAMPLES = 128  # calibration samples cached per block: enough for the residual, cheap to iterate on
ITERATIONS = 20  # T in the paper


def block_consumer(block: Block, full_input: torch.Tensor):
    """Y as a function of the group's channels of H (other input channels, if any, held fixed)."""
    if block.channels == list(range(full_input.shape[1])):
        return block.consumer
    index = torch.tensor(block.channels)

    def consumer(hidden: torch.Tensor) -> torch.Tensor:
        return block.consumer(full_input.index_copy(1, index, hidden))

    return consumer


def selection_scores(hidden: torch.Tensor, consumer, multiple: int, iterations: int = ITERATIONS) -> torch.Tensor:
    """Scores whose ranking replays i-SpaSP's selections at every grid width (see the module doc)."""
    channels = hidden.shape[1]
    dims = [0] + list(range(2, hidden.dim()))
    activation = hidden.sum(dim=dims)
    order: list[int] = []
    for width in width_grid(channels, multiple):
        with torch.enable_grad():
            selected = ispasp_select(hidden, consumer, width, iterations=iterations)
        entrants = sorted(set(selected) - set(order), key=lambda j: (-float(activation[j]), j))
        order.extend(entrants)
    scores = activation.clamp_min(0) / (float(activation.clamp_min(0).max()) + 1e-12) * 0.999
    for rank, j in enumerate(order):
        scores[j] = 1.0 + (channels - rank) / channels
    return scores.float()


@criteria.register("ispasp")
class ISpaSP(Criterion):
    """i-SpaSP selections replayed as scores: selected channels first, then by activation."""

    def prepare(self, scoring: ScoringContext) -> None:
        self.multiple = scoring.channel_multiple
        self.blocks, self.inputs = prepare_blocks(scoring, "ispasp", scoring.calibration[:MAX_SAMPLES])

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        block = self.blocks.get(group.name)
        if block is None:
            return magnitude_scores(group)
        full = self.inputs[block.consumer]
        return selection_scores(consumer_view(block, full), block_consumer(block, full), self.multiple)
