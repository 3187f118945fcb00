"""Regularizers: penalties added to the finetuning loss, registered by name (`--regularizer NAME`).

A regularizer is built on one model and its group graph. `penalty()` is added to every training
step's loss; `after_step()` runs after the optimiser step, which lets a regularizer own parameters
that are not the model's (DSM's prior) and step them with its own optimiser, so the model's
state_dict, optimiser and ONNX export never see them. `channel_scores(group)` is the per-channel
importance the regularizer implies (what `--importance synaptic_strength` and `--importance dsm`
read), or None when it has no opinion about that group.

Where it is used: the finetune stage adds the penalty while finetuning the pruned model, and the
prune stage first runs a short regularised finetune of the dense model (finetune.regularize_epochs)
so that the criterion scores a model the penalty has already shaped.
"""
from __future__ import annotations

import torch
from torch import nn

from .graph import ChannelGroup, GroupGraph
from .registry import Registry
from .research import dsm as dsm_math
from .research import synaptic

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORMS = nn.modules.batchnorm._BatchNorm


class Regularizer:
    name = "base"

    def __init__(self, model: nn.Module, graph: GroupGraph, n_data: int):
        self.model, self.graph, self.n_data = model, graph, n_data

    def penalty(self) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self) -> None:  # noqa: B027 - optional hook
        pass

    def channel_scores(self, group: ChannelGroup) -> torch.Tensor | None:
        return None


regularizers: Registry[type[Regularizer]] = Registry("regularizer")


def build(name: str, model: nn.Module, graph: GroupGraph, n_data: int) -> Regularizer:
    return regularizers.get(name)(model, graph, n_data)


def _consumers(graph: GroupGraph, group: ChannelGroup) -> list[tuple[nn.Module, list[int]]]:
    """(layer, input channel indices) for every ordinary conv/linear reading the group's channels."""
    found = []
    for dep, idxs in group.tp_group:
        module = dep.target.module
        if not isinstance(module, _LAYERS) or not graph.dg.is_in_channel_pruning_fn(dep.handler):
            continue
        if getattr(module, "groups", 1) != 1 or len(idxs) != group.channels:
            continue  # grouped convs and flatten index maps: no per-connection kernel to read
        found.append((module, [int(i) for i in idxs]))
    return found


def _input_scale(graph: GroupGraph, group: ChannelGroup) -> torch.Tensor:
    """|gamma_i| of the BatchNorm producing each channel; averaged where a residual add joins several
    BatchNorms (the add has no single scale; the mean keeps the group's channels comparable); 1 without."""
    gammas = []
    for dep, idxs in group.tp_group:
        module = dep.target.module
        if isinstance(module, _BATCHNORMS) and module.affine and graph.dg.is_out_channel_pruning_fn(dep.handler):
            gammas.append(module.weight[[int(i) for i in idxs]].abs())
    if not gammas:
        return torch.ones(group.channels)
    return torch.stack(gammas).mean(0)


def _kernel_norms(weight: torch.Tensor, idxs: list[int]) -> torch.Tensor:
    """||K_ji|| for every output j and input i in idxs: [out, len(idxs)]; smooth at zero for the gradient."""
    flat = weight[:, idxs].reshape(weight.shape[0], len(idxs), -1)
    return torch.sqrt((flat ** 2).sum(2) + 1e-12)


@regularizers.register("synaptic_strength")
class SynapticStrengthPenalty(Regularizer):
    """lambda * sum over connections of S_ij = |gamma_i| * ||K_ij|| (ALGORITHMS.md §5).

    The paper re-parameterises K_ij = s_ij * K_hat_ij (BN scale folded in, ||K_hat|| = 1) and puts an L1
    penalty on s. Under that re-parameterisation s_ij equals |gamma_i| * ||K_ij||, so we put the same
    L1 penalty on the strengths computed from the ordinary weights: the objective is the same, only the
    parameterisation the optimiser walks differs, and the model keeps its own layers for export.
    Connections counted: every (BatchNorm channel of a prunable group -> consumer kernel) pair.
    """

    strength = 5e-5  # lambda; the paper's value was not recovered, ALGORITHMS.md suggests 1e-5..1e-4

    def __init__(self, model: nn.Module, graph: GroupGraph, n_data: int):
        super().__init__(model, graph, n_data)
        self.groups = [(g, _consumers(graph, g)) for g in graph.groups if g.kind == "channels"]

    def strengths(self, group: ChannelGroup, consumers) -> list[torch.Tensor]:
        gamma = _input_scale(self.graph, group)
        return [_kernel_norms(layer.weight, idxs) * gamma.view(1, -1) for layer, idxs in consumers]

    def penalty(self) -> torch.Tensor:
        total = torch.zeros(())
        for group, consumers in self.groups:
            for s in self.strengths(group, consumers):
                total = total + s.sum()
        return self.strength * total

    @torch.no_grad()
    def channel_scores(self, group: ChannelGroup) -> torch.Tensor | None:
        """Input-channel score (§5(b)): sum over consumers j of |s_ij|; a channel is removable when all
        of its outgoing connections are."""
        consumers = _consumers(self.graph, group)
        if not consumers:
            return None
        return sum(synaptic.channel_scores(s)[0] for s in self.strengths(group, consumers)).float()


@regularizers.register("dsm")
class DSMPenalty(Regularizer):
    """The Dirichlet scale mixture prior's MAP penalty (ALGORITHMS.md §7(b)) on every conv/linear weight.

    One DSMPrior per layer (phi over its input channels, lambda per output channel, a global tau), its
    parameters stepped by this regularizer's own Adam. The penalty is divided by the number of training
    samples: the data term is a mean over samples, so penalty / N is the MAP objective per sample.
    Before training, the prior is fitted to the current weights (its parameters only, no data): a
    starting point the finetune then moves with the weights, so even a very short phase has scores.
    The logged training loss goes below zero with this penalty: its Dirichlet term (1 - alpha) * sum
    log phi is a log-density, negative, and keeps falling as each unit concentrates on fewer inputs.
    """

    lr = 3e-2  # the prior's parameters are logits and softplus inputs: O(1) moves are what they need
    fit_steps = 40  # each step is a pass over every weight of the model; 40 settle phi to a few %

    def __init__(self, model: nn.Module, graph: GroupGraph, n_data: int):
        super().__init__(model, graph, n_data)
        self.layers = [m for m in model.modules() if isinstance(m, _LAYERS) and getattr(m, "groups", 1) == 1
                       and m.weight.shape[1] >= 2]
        self.priors = {m: dsm_math.DSMPrior(tuple(m.weight.shape), n_data=n_data) for m in self.layers}
        params = [p for prior in self.priors.values() for p in prior.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=self.lr)
        self.fit_to_weights()

    def penalty(self) -> torch.Tensor:
        return sum(prior.penalty(m.weight) for m, prior in self.priors.items()) / self.n_data

    def after_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def fit_to_weights(self, steps: int | None = None) -> None:
        """MAP of the prior's parameters with the weights held fixed (cheap: no data)."""
        with torch.enable_grad():
            for _ in range(self.fit_steps if steps is None else steps):
                loss = sum(prior.penalty(m.weight.detach()) for m, prior in self.priors.items())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def channel_scores(self, group: ChannelGroup) -> torch.Tensor | None:
        """Mean over the group's layers of each layer's DSM channel score, each normalised to mean 1:
        tau * lambda_tilde_j where the group removes output channels, sum_j phi_ji lambda_tilde_j^2
        where it removes input channels (the two have different units, hence the normalisation)."""
        parts = []
        for dep, idxs in group.tp_group:
            prior = self.priors.get(dep.target.module)
            if prior is None or len(idxs) != group.channels:
                continue
            out_scores, in_scores = prior.channel_scores()
            if self.graph.dg.is_out_channel_pruning_fn(dep.handler):
                part = out_scores[[int(i) for i in idxs]]
            elif self.graph.dg.is_in_channel_pruning_fn(dep.handler):
                part = in_scores[[int(i) for i in idxs]]
            else:
                continue
            parts.append(part / (part.mean() + 1e-12))
        if not parts:
            return None
        return torch.stack(parts).mean(0).float()
