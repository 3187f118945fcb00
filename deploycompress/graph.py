"""Dependency groups of coupled channels, found with Torch-Pruning's DepGraph.

A *group* is the set of channels that must go together: a conv's output channels, its BatchNorm
entries, every consumer's input channels and, across a residual add, the partner branches. We name
a group after its root module (the conv or linear whose output channels it removes), which is stable
for the same architecture, so a plan (group name -> kept units) can be saved as JSON and replayed on
a fresh copy of the dense model instead of pickling pruned modules.

A group's *units* are what a plan keeps or removes. Usually a unit is one channel. Where a grouped
convolution reads or writes the channels, a unit is one channel offset taken in every one of its
groups (so each conv group keeps the same width and the same weight columns); so it is where a
GroupNorm with several groups normalises them (Torch-Pruning keeps its num_groups); where a split's
parts meet again in an elementwise op (a GLU), a unit is channel i of every part. For
nn.MultiheadAttention a unit is one attention head (attention_heads.py); for nn.LSTM, nn.GRU and nn.RNN
one hidden unit (recurrent.py).

Two ways to apply a plan:
- `apply_plan` removes channels physically (parameter tensors lose rows and columns);
- `ChannelMasks` zeroes the removed channels with forward hooks, so a model can be fine-tuned at full
  size and then shrunk exactly (`shrink` checks that both agree).

Not every group can be removed safely (a reshape that depends on the channel count, a parameter
used directly, a coupling the masks cannot express). `GroupGraph(verify=True)` therefore test-prunes
a copy of the model and compares it with the masked model; a group that fails is left dense and
recorded in `skipped` with a one-line reason.
"""
from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from . import attention_heads, frozen_norm, recurrent, tp_fixes
from .model_outputs import output_modules, output_tensors
from .errors import UserError, first_line
from .masks import ChannelMasks
from .unfollowed_ops import unfollowed_mapping_note, unfollowed_op_reason

tp_fixes.apply()

Plan = dict[str, list[int]]  # group name -> kept unit indices (ascending)

# Torch-Pruning's nodes for torch.split/chunk and unbind, and for torch.cat: where one root channel can
# couple to others (a GLU's halves; a GhostNet module's concat of a conv's output and a depthwise conv of
# it, whose position i and init + i go together)
_SPLITS_AND_CONCATS = (tp.ops._SplitOp, tp.ops._UnbindOp, tp.ops._ConcatOp)
# masked and test-pruned outputs must agree to float rounding (relative to the output's scale)
VERIFY_TOLERANCE = 1e-4


@dataclass
class ChannelGroup:
    name: str
    channels: int  # prunable units: channels, channel offsets shared by a grouped conv's groups, or heads
    members: list[str]
    tp_group: object = field(repr=False)  # Torch-Pruning group; () for attention heads
    units: list[list[int]] | None = field(default=None, repr=False)  # root channels of each unit; None: one each
    kind: str = "channels"  # "channels" or "heads"
    attention: nn.Module | None = field(default=None, repr=False)  # the nn.MultiheadAttention of a heads group
    recurrent: bool = False  # the hidden units of an nn.LSTM / nn.GRU / nn.RNN

    @property
    def unit_size(self) -> int:
        """Root channels per unit: 1, or how many conv groups share one channel offset (heads: 1 head)."""
        return 1 if self.units is None else len(self.units[0])

    def root_channels(self, kept_units: list[int]) -> list[int]:
        if self.units is None:
            return sorted(kept_units)
        return sorted(c for u in kept_units for c in self.units[u])

    def unit_multiple(self, channel_multiple: int) -> int:
        """The width multiple in units: heads are not channels (any count will do), a unit of several
        channels already contributes that many, and hidden units take a finer multiple than convs
        (recurrent.HIDDEN_MULTIPLE)."""
        if self.kind == "heads":
            return 1
        if self.recurrent:  # a unit is one hidden unit, in one direction or both
            return min(channel_multiple, recurrent.HIDDEN_MULTIPLE)
        if self.units is None:
            return channel_multiple
        return max(1, -(-channel_multiple // self.unit_size))

    def unit_scores(self, criterion) -> torch.Tensor:
        """One score per unit. `criterion(group)` scores root channels; units sum their channels'.
        Heads are scored by their weights' L2 norm (criteria read Torch-Pruning groups, heads have none)."""
        if self.kind == "heads":
            return attention_heads.head_scores(self.attention)
        scores = criterion(self)
        if self.units is None:
            return scores
        return torch.stack([scores[u].sum() for u in self.units])


@dataclass
class SkippedModule:
    name: str
    reason: str


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {module: name for name, module in model.named_modules()}


class GroupGraph:
    """DepGraph over one model plus the groups we are allowed to prune.

    verify=True test-prunes every group on a copy (see the module docstring); the prune stage asks
    for it once, while replaying a known-good plan (apply_plan, masks) does not need it.

    `only` (a plan's group names) builds those groups alone, the same as a full build finds them: a
    replay needs no others, DepGraph is not walked for them (a ShuffleNet's build took 10-19 s, most of it
    in groups a plan leaves out), and a group the verification trial left dense is not there to be read
    (scoring one for the report raised IndexError on DepGraph's wrong indices).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, ignore: str | None = None,
                 min_channels: int = 2, verify: bool = False, verify_inputs: torch.Tensor | None = None,
                 only: Collection[str] | None = None):
        self.model = model
        self.only = None if only is None else set(only)
        self.example_input = example_input
        self.verify_inputs = verify_inputs  # real samples for the verification trial; random ones without
        self.ignore = ignore
        # DepGraph traces autograd, so every parameter must require grad while it builds.
        was_training = model.training
        frozen = [p for p in model.parameters() if not p.requires_grad]
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
        # for the trace only: a recurrent layer's final state stands in as its output's (recurrent.trace_hook)
        tracing = [m.register_forward_hook(recurrent.trace_hook) for m in model.modules()
                   if isinstance(m, recurrent.RECURRENT)]
        try:
            with warnings.catch_warnings():  # e.g. "unwrapped parameters detected": _verify reports what matters
                warnings.simplefilter("ignore")
                pruner = recurrent.RecurrentPruner()
                # Torch-Pruning calls model(*example_inputs) first, which for a bare tensor of batch 1 runs
                # the model on its one sample, unbatched. Convs and linears trace the same either way (the
                # groups every model had so far came from that); a recurrent layer's final state then has
                # no batch axis, so those models are traced on the batch as given.
                inputs = (example_input,) if tracing else example_input
                try:
                    self.dg = tp.DependencyGraph().build_dependency(
                        model, example_inputs=inputs,
                        customized_pruners={**{t: pruner for t in recurrent.RECURRENT},
                                            **frozen_norm.customized_pruners(model)})
                except Exception as exc:  # noqa: BLE001 - the forward itself already ran (context.py): DepGraph failed
                    raise UserError(f"Torch-Pruning could not trace the model's channel dependencies "
                                    f"({type(exc).__name__}: {first_line(exc, 120)}); --debug shows where") from exc
        finally:
            for handle in tracing:
                handle.remove()
            model.train(was_training)
            for p in frozen:
                p.requires_grad_(False)
        names = module_names(model)
        self._names = names
        outputs = set(output_modules(model, example_input))
        self.output_names = sorted(names[m] for m in outputs)  # never pruned: the model's output width is fixed
        ignored = set(outputs)
        if ignore:
            pattern = re.compile(ignore)
            ignored |= {m for m, n in names.items() if n and pattern.search(n)}
        self.ignored = sorted(names[m] for m in ignored)
        self.groups: list[ChannelGroup] = []
        self.skipped: list[SkippedModule] = []
        tp_groups = self._tp_groups(ignored)
        for group in tp_groups:
            self._add_channel_group(group, min_channels)
        self._add_recurrent_groups(tp_groups, ignored, min_channels)
        for module, name in names.items():
            if isinstance(module, nn.MultiheadAttention) and module not in ignored and self._wanted(name):
                self._add_head_group(module, name, min_channels)
        if verify:
            self._verify()
        self._by_name = {g.name: g for g in self.groups}

    # -- building groups ---------------------------------------------------------------------------

    def _wanted(self, name: str) -> bool:
        return self.only is None or name in self.only

    def _tp_groups(self, ignored: set) -> list:
        """DepGraph.get_all_groups, one root at a time: where DepGraph fails to follow one root's channels
        (ShuffleNet's channel shuffle then chunk: an IndexError in its split mapping) that root is left
        dense with the reason and the other groups are still found, where get_all_groups ends the run."""
        dg = self.dg
        ignored = set(ignored) | set(dg.IGNORED_LAYERS_IN_TRACING)
        visited: set = set()
        groups = []
        roots = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)  # get_all_groups' default root types
        for module in list(dg.module2node):
            if module in ignored or module in visited or not isinstance(module, roots):
                continue
            # A root left out of `only` is not walked, so it marks nothing visited: every root the full
            # build reaches unvisited, this one reaches unvisited too, and its group is the same.
            if not self._wanted(self._names.get(module, "")):
                continue
            pruner = dg.get_pruner_of_module(module)
            if pruner is None or pruner.get_out_channels(module) is None:
                continue
            try:
                group = dg.get_pruning_group(module, pruner.prune_out_channels,
                                             list(range(pruner.get_out_channels(module))))
            except Exception as exc:  # noqa: BLE001 - whatever DepGraph raises is the reason
                self.skipped.append(SkippedModule(self._names[module], "Torch-Pruning could not follow its channels "
                                                  f"({type(exc).__name__}: {first_line(exc, 120)})"))
                continue
            pruned = {dep.target.module for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler)}
            visited |= pruned
            if not pruned & ignored:
                groups.append(group)
        return groups

    def _add_channel_group(self, group, min_channels: int) -> None:
        names = self._names
        root = group[0].dep.target.module
        name = names[root]
        channels = len(group[0].idxs)
        modules = {d.target.module for d, _ in group}
        members = sorted({names[m] for m in modules if isinstance(m, nn.Module) and m in names})
        attention = sorted(names[m] for m in modules if isinstance(m, nn.MultiheadAttention))
        if attention:
            self.skipped.append(SkippedModule(name, f"its {channels} channels are the embedding width of "
                                              f"nn.MultiheadAttention {attention[0]} (its heads are pruned instead)"))
            return
        units, grouped, reason = self._grouped_conv_units(group, channels)
        reason = unfollowed_op_reason(group) or reason
        if isinstance(root, recurrent.RECURRENT):
            reason = recurrent.blocker(root) or reason
            units = recurrent.units(root) if units is None else units
        if reason:
            self.skipped.append(SkippedModule(name, reason))
            return
        count = channels if units is None else len(units)
        if count < min_channels:
            reason = f"only {count} channel(s)"
            if grouped is not None:
                reason = (f"{self._describe_grouped(grouped)} would lose its equal groups: each of them holds only "
                          f"{count} of these channels")
            self.skipped.append(SkippedModule(name, reason))
            return
        self.groups.append(ChannelGroup(name, count, members, group, units,
                                        recurrent=isinstance(root, recurrent.RECURRENT)))

    def _add_recurrent_groups(self, tp_groups: list, ignored: set, min_channels: int) -> None:
        """A group rooted at each recurrent layer's hidden units that no conv/linear group already removes
        (a residual stream can). Asked for one layer at a time, apart from the conv/linear groups:
        DepGraph may still fail to follow one (its unrolled internals in the way), and that failure
        leaves the layer dense with its reason instead of ending the run."""
        rooted = {dep.target.module for group in tp_groups for dep, _ in group
                  if self.dg.is_out_channel_pruning_fn(dep.handler)}
        for module, name in self._names.items():
            if not isinstance(module, recurrent.RECURRENT) or module in ignored or module in rooted \
                    or not self._wanted(name):
                continue
            if module not in self.dg.module2node:
                self.skipped.append(SkippedModule(name, "Torch-Pruning did not trace it: its outputs do not reach "
                                                  "the model's output as a tensor it follows"))
                continue
            pruner = self.dg.get_pruner_of_module(module)
            try:
                group = self.dg.get_pruning_group(module, pruner.prune_out_channels,
                                                  list(range(pruner.get_out_channels(module))))
            except Exception as exc:  # noqa: BLE001 - whatever DepGraph raises is the reason
                self.skipped.append(SkippedModule(name, f"Torch-Pruning cannot follow its hidden units: "
                                                  f"{type(exc).__name__}: {first_line(exc)}"))
                continue
            if any(dep.target.module in ignored for dep, _ in group if self.dg.is_out_channel_pruning_fn(dep.handler)):
                continue
            self._add_channel_group(group, min_channels)

    def _grouped_conv_units(self, group, channels: int):
        """Units for a group that reaches grouped convolutions or GroupNorms of several groups, or None
        when each channel is a unit.

        Torch-Pruning removes a grouped conv's input channels by dropping the same weight columns in
        every conv group, and its output channels row by row, so a removal is valid when it takes the
        same channel offsets in every conv group. It keeps a GroupNorm's num_groups, so there too each
        norm group must lose the same offsets (then each keeps its own channels, in order). Offsets
        linked through several such modules are merged into one unit (union-find over root channel
        positions), and so are the parts of a split that an elementwise op joins again
        (`_union_split_partners`). Returns (units or None, the last grouped module seen or None, a reason
        to skip or None).
        """
        parent = list(range(channels))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        def union(a: int, b: int) -> None:
            parent[find(a)] = find(b)

        coupled = self._union_split_partners(group, channels, union)
        coupled = _union_pixel_blocks(group, channels, union) or coupled
        found = None
        for item in group:
            module = item.dep.target.module
            if isinstance(module, nn.GroupNorm):
                if module.num_groups == 1:  # one group: any channel may go (ChannelMasks renormalises the rest)
                    continue
                width = module.num_channels
            elif not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
                continue
            elif module.groups == module.out_channels:  # depthwise: in and out channels go together
                continue
            elif self.dg.is_in_channel_pruning_fn(item.dep.handler):
                width = module.in_channels
            else:
                width = module.out_channels
            found = module
            block = width // _group_count(module)
            if len(item.idxs) != width or item.root_idxs is None:
                return None, module, (f"{self._describe_grouped(module)} receives only {len(item.idxs)} of its "
                                      f"{width} channels from this group, so its groups cannot stay equal")
            by_offset: dict[int, list[int]] = {}
            for idx, root in zip(item.idxs, item.root_idxs):
                by_offset.setdefault(int(idx) % block, []).append(int(root))
            for roots in by_offset.values():
                for r in roots[1:]:
                    union(r, roots[0])
        if found is None and not coupled:
            return None, None, None
        units: dict[int, list[int]] = {}
        for c in range(channels):
            units.setdefault(find(c), []).append(c)
        return sorted(units.values(), key=lambda u: u[0]), found, None

    def _union_split_partners(self, group, channels: int, union) -> bool:
        """Unions the root channels Torch-Pruning removes together; True when any are coupled.

        A split that feeds one elementwise op with several of its parts (a GLU: `a, b = conv(x).chunk(2)`,
        `a * sigmoid(b)`) couples channel i of one part with channel i of the others; so does a concat of
        a tensor and a depthwise conv of it (GhostNet: a channel per unit let the latency table's
        narrowest variant remove every channel, and the run stopped at "ONNX export failed"). DepGraph removes
        both when asked for one, but the group it lists for all channels maps each to itself, so a
        channel per unit would let a plan keep one partner and lose the other. Only groups that pass a
        split or a concat are asked, and first whether any channel is coupled at all (`_any_coupled`); only then is
        each channel asked for alone, one graph walk per channel."""
        if not any(isinstance(item.dep.target.module, _SPLITS_AND_CONCATS) for item in group):
            return False
        root, handler = group[0].dep.target.module, group[0].dep.handler

        def removed_with(asked: list[int]) -> set[int]:
            removed = {int(i) for i in self.dg.get_pruning_group(root, handler, asked)[0].idxs}
            return {p for p in removed if 0 <= p < channels}

        if not self._any_coupled(channels, removed_with):
            return False
        coupled = False
        for c in range(channels):
            for p in removed_with([c]):
                if p != c:
                    union(p, c)
                    coupled = True
        return coupled

    @staticmethod
    def _any_coupled(channels: int, removed_with) -> bool:
        """Whether asking for some channels removes others too, in 2 log2(channels) graph walks instead of
        one per channel (a ShuffleNet's groups all pass a chunk: 256 walks each, 7 s a graph build).
        DepGraph maps indices one by one, so what a set of channels removes is the union of what each
        removes alone; two coupled channels differ in some bit of their index, and asking for every
        channel with that bit 0, then every one with it 1, removes a channel not asked for."""
        for bit in range(max(1, (channels - 1).bit_length())):
            for value in (0, 1):
                asked = [c for c in range(channels) if (c >> bit) & 1 == value]
                if asked and not removed_with(asked) <= set(asked):
                    return True
        return False

    def _describe_grouped(self, module: nn.Module) -> str:
        if isinstance(module, nn.GroupNorm):
            return f"GroupNorm {self._names[module]} (num_groups={module.num_groups})"
        return f"grouped conv {self._names[module]} (groups={module.groups})"

    def _add_head_group(self, module: nn.MultiheadAttention, name: str, min_channels: int) -> None:
        reason = attention_heads.head_pruning_blocker(module)
        if reason is None and module.num_heads < min_channels:
            reason = f"only {module.num_heads} head(s)"
        if reason:
            self.skipped.append(SkippedModule(name, reason))
            return
        members = [name, f"{name}.out_proj"]
        self.groups.append(ChannelGroup(name, module.num_heads, members, (), None, "heads", module))

    # -- verification ------------------------------------------------------------------------------

    def _verify(self) -> None:
        """Test-prune every group on a copy and compare with the masked model; skip the failures.

        All groups are tried together first (one copy, the common case); only when that fails are the
        groups bisected to find the ones that break.
        """
        generator = torch.Generator().manual_seed(0)
        shape = (2, *self.example_input.shape[1:])
        if self.verify_inputs is not None and len(self.verify_inputs):
            # the data's own samples: a forward that takes a log of its input is NaN on random normals
            x = self.verify_inputs[:2]
        elif self.example_input.is_floating_point():
            x = torch.randn(shape, generator=generator).to(self.example_input.dtype)
        else:  # token ids: 0 and 1 are in every vocabulary
            x = torch.randint(0, 2, shape, generator=generator).to(self.example_input.dtype)
        self._by_name = {g.name: g for g in self.groups}
        failures = self._find_failures(self.groups, x)
        for group in self.groups:
            if group.name in failures:
                self.skipped.append(SkippedModule(group.name, failures[group.name]))
        self.groups = [g for g in self.groups if g.name not in failures]

    def _find_failures(self, groups: list[ChannelGroup], x: torch.Tensor) -> dict[str, str]:
        if not groups:
            return {}
        reason = self._trial(groups, x)
        if reason is None:
            return {}
        if len(groups) == 1:
            group = groups[0]
            return {group.name: self._raw_parameters_note(group) + reason + unfollowed_mapping_note(group, reason)}
        half = len(groups) // 2
        failures = self._find_failures(groups[:half], x) | self._find_failures(groups[half:], x)
        if not failures:  # each half is fine alone, not together: keep the first half
            failures = {g.name: f"pruned together with other groups: {reason}" for g in groups[half:]}
        return failures

    def _trial(self, groups: list[ChannelGroup], x: torch.Tensor) -> str | None:
        """Why removing a few units of each group breaks the model, or None when it is exact."""
        plan = {g.name: _trial_kept_units(g.channels) for g in groups}
        was_training = self.model.training
        self.model.eval()
        try:
            masks = ChannelMasks(self, plan)
            try:
                with torch.no_grad():
                    masked = output_tensors(self.model(x))
            finally:
                masks.remove()
            pruned_model = copy.deepcopy(self.model)
            apply_plan(pruned_model, self.example_input, plan, self.ignore)  # DepGraph needs autograd on
            with torch.no_grad():
                pruned = output_tensors(pruned_model.eval()(x))
        except Exception as exc:  # noqa: BLE001 - whatever the model raises is the reason
            text = str(exc).strip().splitlines()
            return f"pruning breaks the model: {type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ")
        finally:
            self.model.train(was_training)
        if len(masked) != len(pruned) or any(a.shape != b.shape for a, b in zip(masked, pruned)):
            return "pruning changes the shape of the model's outputs"
        for a, b in zip(masked, pruned):
            if a.is_floating_point() and not bool(torch.isfinite(a).all()):
                return ("the model's outputs on the verification inputs are not finite (NaN or Inf), so removing "
                        "channels cannot be checked: its forward expects inputs in a narrower range (a log, a "
                        "sqrt?) than the data or the random inputs of a data-free run")
            diff = float((a - b).abs().max()) if a.numel() else 0.0
            scale = max(1.0, float(a.abs().max()) if a.numel() else 0.0)
            if not diff <= VERIFY_TOLERANCE * scale:
                return f"zeroing its channels is not the same as removing them (outputs differ by {diff:.2g})"
        return None

    def _raw_parameters_note(self, group: ChannelGroup) -> str:
        """Names the parameters of the group that forward uses directly (not through a module)."""
        raw = [self.dg._param_to_name.get(d.target.module, "?") for d, _ in group.tp_group
               if isinstance(d.target.module, nn.Parameter)]
        return f"parameter {', '.join(sorted(set(raw)))} is used directly in forward; " if raw else ""

    # -- applying plans ----------------------------------------------------------------------------

    def __getitem__(self, name: str) -> ChannelGroup:
        return self._by_name[name]

    def _pruning_group(self, name: str, removed: list[int]):
        root = self._by_name[name].tp_group[0].dep.target.module
        pruner = self.dg.get_pruner_of_module(root)
        return self.dg.get_pruning_group(root, pruner.prune_out_channels, removed)

    def _removed_channels(self, name: str, kept: list[int]) -> list[int]:
        group = self._by_name[name]
        all_channels = group.root_channels(list(range(group.channels)))
        return sorted(set(all_channels) - set(group.root_channels(kept)))

    def apply(self, plan: Plan) -> None:
        """Physically remove every unit the plan does not keep (in place)."""
        heads = []
        for name, kept in plan.items():
            if self._by_name[name].kind == "heads":
                heads.append((name, kept))
                continue
            removed = self._removed_channels(name, kept)
            if removed:
                self._pruning_group(name, removed).prune()
        # Replacing attention modules last: the DepGraph above refers to the original modules.
        for name, kept in heads:
            if len(kept) < self._by_name[name].channels:
                attention_heads.prune_heads(self.model, name, sorted(kept))

    def removed_outputs(self, plan: Plan) -> dict[nn.Module, list[int]]:
        """For each module whose output channels the plan removes, those channel indices."""
        result: dict[nn.Module, set[int]] = {}
        for name, kept in plan.items():
            if self._by_name[name].kind == "heads":
                continue
            removed = self._removed_channels(name, kept)
            if not removed:
                continue
            for dep, idxs in self._pruning_group(name, removed):
                module = dep.target.module
                if isinstance(module, nn.Module) and self.dg.is_out_channel_pruning_fn(dep.handler):
                    result.setdefault(module, set()).update(int(i) for i in idxs)
        return {m: sorted(i) for m, i in result.items()}

    def removed_heads(self, plan: Plan) -> dict[nn.Module, list[int]]:
        """For each attention module the plan prunes, the heads it keeps."""
        return {self._by_name[name].attention: sorted(kept) for name, kept in plan.items()
                if self._by_name[name].kind == "heads" and len(kept) < self._by_name[name].channels}


def _trial_kept_units(count: int) -> list[int]:
    """The units a verification trial keeps: all but a quarter, drawn at random (seeded by the count).
    Spread out, so index bookkeeping errors show, and without a period: removing every fourth unit took
    the same offsets from both halves of an F.glu, which Torch-Pruning maps as if it kept its width,
    so the trial passed a group that other plans break."""
    generator = torch.Generator().manual_seed(count)
    removed = set(torch.randperm(count, generator=generator)[:max(1, count // 4)].tolist())
    return [u for u in range(count) if u not in removed]


def apply_plan(model: nn.Module, example_input: torch.Tensor, plan: Plan, ignore: str | None = None) -> nn.Module:
    """Replay a plan on `model` in place and return it."""
    GroupGraph(model, example_input, ignore, min_channels=1, only=plan).apply(plan)
    return model


def _union_pixel_blocks(group, channels: int, union) -> bool:
    """Unions the root channels a pixel shuffle folds into one channel (tp_fixes maps input channel i to
    output channel i // r^2): an ESPCN upsampler's conv keeps or loses whole blocks of r^2, or the
    shuffle's input stops dividing by r^2. DepGraph lists one root channel per output channel, so the
    blocks are taken where the shuffle reads the root's channels as they are (each listed root r at
    r // r^2); True when any were unioned."""
    unioned = False
    for item in group:
        stride = tp_fixes.pixel_shuffle_factor(item.dep.target)
        if stride is None or item.root_idxs is None:
            continue
        pairs = list(zip((int(i) for i in item.idxs), (int(r) for r in item.root_idxs)))
        if not pairs or any(idx != root // stride or root >= channels for idx, root in pairs):
            continue  # something between the root and the shuffle moves channels: the trial decides
        for idx, _ in pairs:
            block = range(idx * stride, min((idx + 1) * stride, channels))
            for r in block[1:]:
                union(r, block[0])
                unioned = True
    return unioned


def _group_count(module: nn.Module) -> int:
    """Groups of a grouped conv or a GroupNorm: its channels are pruned by the same offsets in each."""
    return module.num_groups if isinstance(module, nn.GroupNorm) else module.groups


def round_channels(count: float, channels: int, multiple: int) -> int:
    """Round to a multiple the runtime rewards (ORT's NCHWc path wants 8), within [1, channels]."""
    if channels <= multiple or multiple <= 1:
        return max(1, min(channels, int(round(count))))
    rounded = int(math.floor(count / multiple + 0.5)) * multiple  # half-up, not banker's rounding
    return max(multiple, min(channels, rounded))
