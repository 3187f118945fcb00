"""Channel scores of the Dirichlet scale mixture prior (``--importance dsm``), ALGORITHMS.md §7.

The scores come from a DSM prior trained together with the weights: output channel j scores
tau * lambda_tilde_j, input channel i scores sum_j phi_ji * lambda_tilde_j^2 (regularizers.DSMPenalty
combines them per group). With ``--regularizer dsm`` the prune stage has already run the regularised
finetune and hands its prior over; otherwise this criterion runs its own short DSM-regularised
finetune of the dense model (finetune.regularize_epochs) before scoring. Rescoring later (iterative
policies) refits the prior to the current weights instead of training again.
"""
from __future__ import annotations

import torch

from ..graph import ChannelGroup
from ..importance import Criterion, ScoringContext, criteria, magnitude_scores
from ..regularizers import DSMPenalty


@criteria.register("dsm")
class DSM(Criterion):
    prior: DSMPenalty | None = None

    def prepare(self, scoring: ScoringContext) -> None:
        if self.prior is not None:
            self.prior.fit_to_weights(steps=20)
            return
        if isinstance(scoring.regularizer, DSMPenalty):
            self.prior = scoring.regularizer
            return
        if scoring.finetune is not None:
            self.prior = scoring.finetune("dsm")
        else:
            self.prior = DSMPenalty(scoring.model, scoring.graph, n_data=max(len(scoring.calibration), 1))
            scoring.notes.append("dsm: no finetune available; scores come from the prior fitted to the weights")

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        scores = self.prior.channel_scores(group)
        return magnitude_scores(group) if scores is None else scores
