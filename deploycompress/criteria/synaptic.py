"""Synaptic strength as a criterion (``--importance synaptic_strength``), ALGORITHMS.md §5.

A channel's score is the summed strength of its outgoing connections, S_ij = |gamma_i| * ||K_ij||
over every consumer kernel reading it (gamma_i: the BatchNorm scale producing channel i). The
optional sparsity-regularised phase (``--regularizer synaptic_strength``, finetune.regularize_epochs)
runs before scoring, so connections the L1 penalty drove down score low. Groups with no ordinary
consumer kernel (only grouped convs read them) fall back to L2 magnitude, said once in the notes.
"""
from __future__ import annotations

import torch

from ..graph import ChannelGroup
from ..importance import Criterion, ScoringContext, criteria, magnitude_scores
from ..regularizers import SynapticStrengthPenalty


@criteria.register("synaptic_strength")
class SynapticStrength(Criterion):
    def prepare(self, scoring: ScoringContext) -> None:
        # Scores are read from the current weights, so the same object serves after any finetune.
        self.strengths = SynapticStrengthPenalty(scoring.model, scoring.graph, n_data=1)
        without = [g.name for g in scoring.graph.groups
                   if g.kind == "channels" and self.strengths.channel_scores(g) is None]
        if without:
            note = (f"synaptic_strength: no ordinary consumer kernel for {len(without)} group(s) "
                    f"({', '.join(without)}); scored them by L2 magnitude")
            if note not in scoring.notes:
                scoring.notes.append(note)
                print(f"prune: {note}")

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        scores = self.strengths.channel_scores(group)
        return magnitude_scores(group) if scores is None else scores
