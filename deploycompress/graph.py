"""Dependency groups of coupled channels, found with Torch-Pruning's DepGraph.

A *group* is the set of channels that must go together: a conv's output channels, its BatchNorm
entries, every consumer's input channels and, across a residual add, the partner branches. We name
a group after its root module (the conv or linear whose output channels it removes), which is stable
for the same architecture, so a plan (group name -> kept channel indices) can be saved as JSON and
replayed on a fresh copy of the dense model instead of pickling pruned modules.

Two ways to apply a plan:
- `apply_plan` removes channels physically (parameter tensors lose rows and columns);
- `ChannelMasks` zeroes the removed channels with forward hooks, so a model can be fine-tuned at full
  size and then shrunk exactly (`shrink` checks that both agree).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

Plan = dict[str, list[int]]  # group name -> kept channel indices (root coordinates, ascending)

_LAST_DIM_TYPES = (nn.Linear, nn.LayerNorm)


@dataclass
class ChannelGroup:
    name: str
    channels: int
    members: list[str]
    tp_group: object = field(repr=False)


@dataclass
class SkippedModule:
    name: str
    reason: str


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {module: name for name, module in model.named_modules()}


def output_modules(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """Modules whose output is the model's output (classifier heads): never pruned by default.

    Found by running the model once; falls back to the last conv/linear executed when the output is
    produced by a functional op after it (a flatten, a reshape).
    """
    produced: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor):
            produced.append((module, output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            out = model(example_input)
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    outputs = out if isinstance(out, (tuple, list)) else [out]
    heads = [m for m, t in produced if any(t is o for o in outputs)]
    if not heads:
        weighted = [m for m, _ in produced if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
        heads = weighted[-1:]
    return heads


class GroupGraph:
    """DepGraph over one model plus the groups we are allowed to prune."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, ignore: str | None = None,
                 min_channels: int = 2):
        self.model = model
        self.example_input = example_input
        # DepGraph traces autograd, so every parameter must require grad while it builds.
        was_training = model.training
        frozen = [p for p in model.parameters() if not p.requires_grad]
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
        try:
            self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        finally:
            model.train(was_training)
            for p in frozen:
                p.requires_grad_(False)
        names = module_names(model)
        ignored = set(output_modules(model, example_input))
        if ignore:
            pattern = re.compile(ignore)
            ignored |= {m for m, n in names.items() if n and pattern.search(n)}
        self.ignored = sorted(names[m] for m in ignored)
        self.groups: list[ChannelGroup] = []
        self.skipped: list[SkippedModule] = []
        for group in self.dg.get_all_groups(ignored_layers=list(ignored)):
            root = group[0].dep.target.module
            name = names[root]
            channels = len(group[0].idxs)
            members = sorted({names[d.target.module] for d, _ in group
                              if isinstance(d.target.module, nn.Module) and d.target.module in names})
            if channels < min_channels:
                self.skipped.append(SkippedModule(name, f"only {channels} channel(s)"))
                continue
            self.groups.append(ChannelGroup(name, channels, members, group))
        self._by_name = {g.name: g for g in self.groups}
        self._modules = {n: m for m, n in names.items()}

    def __getitem__(self, name: str) -> ChannelGroup:
        return self._by_name[name]

    def _pruning_group(self, name: str, removed: list[int]):
        root = self._modules[name]
        pruner = self.dg.get_pruner_of_module(root)
        return self.dg.get_pruning_group(root, pruner.prune_out_channels, removed)

    def apply(self, plan: Plan) -> None:
        """Physically remove every channel the plan does not keep (in place)."""
        for name, kept in plan.items():
            group = self._by_name[name]
            removed = sorted(set(range(group.channels)) - set(kept))
            if removed:
                self._pruning_group(name, removed).prune()

    def removed_outputs(self, plan: Plan) -> dict[nn.Module, list[int]]:
        """For each module whose output channels the plan removes, those channel indices."""
        result: dict[nn.Module, set[int]] = {}
        for name, kept in plan.items():
            group = self._by_name[name]
            removed = sorted(set(range(group.channels)) - set(kept))
            if not removed:
                continue
            for dep, idxs in self._pruning_group(name, removed):
                module = dep.target.module
                if isinstance(module, nn.Module) and self.dg.is_out_channel_pruning_fn(dep.handler):
                    result.setdefault(module, set()).update(int(i) for i in idxs)
        return {m: sorted(i) for m, i in result.items()}


def apply_plan(model: nn.Module, example_input: torch.Tensor, plan: Plan, ignore: str | None = None) -> nn.Module:
    """Replay a plan on `model` in place and return it."""
    GroupGraph(model, example_input, ignore, min_channels=1).apply(plan)
    return model


class ChannelMasks:
    """Zero the plan's removed channels at every module that produces them, via forward hooks.

    Zeroing a channel at its conv *and* its BatchNorm makes it exactly zero downstream (BN would
    otherwise add its shift back), so the masked model computes what the shrunk model computes.
    """

    def __init__(self, graph: GroupGraph, plan: Plan):
        self.handles = []
        for module, removed in graph.removed_outputs(plan).items():
            width = _output_width(module)
            if width is None:
                continue
            mask = torch.ones(width)
            mask[removed] = 0.0
            self.handles.append(module.register_forward_hook(_mask_hook(mask, module)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _output_width(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    return None


def _mask_hook(mask: torch.Tensor, module: nn.Module):
    last_dim = isinstance(module, _LAST_DIM_TYPES)

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            return output
        shape = [1] * output.dim()
        dim = output.dim() - 1 if last_dim else 1
        shape[dim] = -1
        return output * mask.to(output.dtype).view(shape)

    return hook


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    was_training = model.training
    model.eval()
    macs, _ = tp.utils.count_ops_and_params(model, example_input)
    model.train(was_training)
    return int(macs)


def round_channels(count: float, channels: int, multiple: int) -> int:
    """Round to a multiple the runtime rewards (ORT's NCHWc path wants 8), within [1, channels]."""
    if channels <= multiple or multiple <= 1:
        return max(1, min(channels, int(round(count))))
    rounded = int(round(count / multiple)) * multiple
    return max(multiple, min(channels, rounded))
