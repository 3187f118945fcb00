"""Latency lookup table: the time of every conv/linear/recurrent operator *inside the model*, on ONNX
Runtime, at each candidate width.

How it is measured: the model is built at a ladder of uniform keep ratios (dense, 7/8, ... 1/8 of every
group, on the channel multiples the runtime rewards), each variant is exported and run under ORT's
profiler, and every conv/linear operator's time is recorded under its operator signature (batch, input
and output widths, spatial size, kernel, groups) at that variant's widths.
Operators are timed in context on purpose: an operator timed alone pays for layout changes (ORT's
NCHWc reorders) and run overhead that a chain of fused convs inside a model does not, and the error is
not a constant (measured here: a 32->32 3x3 conv at 16x16 took 90 us alone, 51 us inside the model).

Every operator's time is the sum of the profiled nodes that map back (profiler.LayerMap) to its module:
ORT fuses BatchNorm and activations into the conv, and its NCHWc layout pads channel counts to its
block, so the shapes the profiler reports are not the model's widths. Attention heads have no single
kernel: an nn.MultiheadAttention becomes projections, two batched MatMuls, a softmax and reshapes; it
is one "attention" operator timed over its whole module, whose width is its head count.

Any operator's time at any widths is then interpolated along its own measured ladder in the
coordinate its cost scales with (input width x output width, or width for depthwise).

Results are cached on disk keyed by operator signature and by what latency depends on besides the
model: ORT version, CPU model and instruction set, threads, batch size. A second run of the same model
finds every signature it needs and builds nothing.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from torch import nn

from .. import recurrent
from ..fileio import write_json
from ..graph import GroupGraph
from . import runtime
from .profiler import LayerMap, aggregate_events, resolve_layer, within

PROFILE_MIN_RUNS = 20
PROFILE_WARMUP_RUNS = 5
PROFILE_TARGET_MS = 250.0
# Bumped whenever what an entry means changes, so a cache written by an older build is not mixed in
# (2: operators timed by module, not by the shapes the profiler reports).
TABLE_FORMAT = 2


# ORT computes a recurrent layer's input products for every step in one GEMM, and its recurrent ones a
# step at a time: a multiply-accumulate of the second kind cost about twice one of the first (a least-
# squares fit over input widths 16-192 and hidden sizes 24-128, ORT 1.32, one thread: b/a = 2.2-2.4 for
# a one-layer LSTM or GRU). One curve per operator over input x hidden + 2 x hidden x hidden explained
# the layer's time with a median error of 1-9%, over input x hidden + hidden x hidden 7-22%.
RECURRENT_STEP_WEIGHT = 2.0


@dataclass(frozen=True)
class OpSignature:
    """What one conv/linear's latency depends on inside a model (besides the runtime fingerprint)."""

    kind: str  # "conv", "linear", "attention" (cin = cout = heads; spatial_in = (sequence, embedding)) or
    # "recurrent" (cin = input width, cout = hidden units; spatial_in = (steps,);
    # kernel = (gates, layers, directions))
    batch: int
    cin: int
    cout: int
    spatial_in: tuple[int, ...]  # conv: input spatial dims; linear: (rows per sample,)
    spatial_out: tuple[int, ...]
    kernel: tuple[int, ...] = ()
    groups: int = 1

    def key(self) -> str:
        return json.dumps([self.kind, self.batch, self.cin, self.cout, list(self.spatial_in), list(self.spatial_out),
                           list(self.kernel), self.groups])

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.cin == self.cout

    def with_widths(self, cin: int, cout: int) -> "OpSignature":
        groups = cin if self.depthwise else self.groups
        return OpSignature(self.kind, self.batch, cin, cout, self.spatial_in, self.spatial_out, self.kernel, groups)

    def cost_coordinate(self) -> float:
        """What the kernel's time grows with: width for depthwise convs and for attention heads (each
        head adds its own projections and attention); for a recurrent layer, hidden x input width (a
        layer above the first reads every direction of the one below) plus the recurrent products,
        hidden x hidden a layer, weighted RECURRENT_STEP_WEIGHT; input x output width otherwise."""
        if self.kind == "recurrent":
            layers, directions = self.kernel[1], self.kernel[2]
            inputs = self.cout * self.cin + (layers - 1) * self.cout * directions * self.cout
            return float(inputs + RECURRENT_STEP_WEIGHT * layers * self.cout * self.cout)
        return float(self.cin if self.depthwise or self.kind == "attention" else self.cin * self.cout)


def signatures_from_profile(events: list[dict], batch: int) -> dict[str, list[float]]:
    """Kernel times (ms) per operator signature from ORT profiler events."""
    times: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        args = event.get("args", {})
        op = args.get("op_name")
        try:
            inputs = [next(iter(s.values())) for s in args["input_type_shape"]]
            output = next(iter(args["output_type_shape"][0].values()))
        except (KeyError, IndexError, StopIteration, AttributeError):
            continue
        sig = None
        if op in ("Conv", "FusedConv") and len(inputs) >= 2 and len(inputs[1]) >= 3:
            x, w = inputs[0], inputs[1]
            groups = max(1, x[1] // max(w[1], 1))
            sig = OpSignature("conv", batch, x[1], w[0], tuple(x[2:]), tuple(output[2:]), tuple(w[2:]), groups)
        elif op in ("Gemm", "MatMul", "FusedMatMul") and len(inputs) >= 2:
            x = inputs[0]
            rows = _linear_rows(x[:-1], batch)
            sig = OpSignature("linear", batch, x[-1], output[-1], rows, rows)
        if sig is not None:
            times.setdefault(sig.key(), []).append(event["dur"] / 1000.0)
    return times


def profile_operator_times(model_bytes: bytes, threads: int, batch: int, device: str = "cpu",
                           scopes: dict[str, OpSignature] | None = None,
                           calls: dict[str, int] | None = None) -> dict[str, float]:
    """Run a model under ORT's profiler; time per run (ms) of each operator, keyed by its signature.

    `scopes` maps each operator's module name to its signature at this variant's widths. An operator's
    time is the sum of the profiled nodes that map back to its module (profiler.LayerMap), which is the
    only way to tell what a node computed: ORT's NCHWc layout pads channel counts to its block (16 on
    the AVX-512 machines here), so a 24 -> 40 conv is profiled with the shapes of a 32 -> 48 one, and a table
    keyed by profiled shapes never found widths off the block and re-profiled them on every run. An
    operator no node maps to falls back to its signature as read from the profiled shapes. Without
    `scopes`, every Conv/Gemm/MatMul is recorded under the signature its profiled shapes give."""
    events = runtime.profiled_events(
        model_bytes, threads, device, batch, warmup=PROFILE_WARMUP_RUNS,
        runs=lambda session, feed: max(PROFILE_MIN_RUNS,
                                       runtime.calibrate_runs(session, feed, target_ms=PROFILE_TARGET_MS)))
    warm = events[len(events) // 10:]  # drop the first runs' events: cold caches
    samples = signatures_from_profile(warm, batch)
    # Several operators can share a signature (two identical convs); each run then contributes several
    # samples. A trimmed mean keeps sub-microsecond resolution that a median of integer us would lose.
    by_shape = {key: _trimmed_mean(values) for key, values in samples.items()}
    if not scopes:
        return by_shape
    times = scope_times(events, onnx.load_from_string(model_bytes), scopes, calls)
    for sig in scopes.values():
        if sig.key() not in times and sig.key() in by_shape:
            times[sig.key()] = by_shape[sig.key()]
    return times


def scope_times(events: list[dict], graph: onnx.ModelProto, scopes: dict[str, OpSignature],
                calls: dict[str, int] | None = None) -> dict[str, float]:
    """Per-run time (ms) of every node that belongs to each module in `scopes`, keyed by its signature;
    for a module called several times in one forward (`calls`: weights shared across steps), the time
    of one call, which is what its signature means to every other model reading the cache."""
    breakdown = aggregate_events(events, LayerMap(graph), warmup_runs=PROFILE_WARMUP_RUNS)
    totals = dict.fromkeys(scopes, 0.0)
    modules = list(scopes)
    for node in breakdown["nodes"]:
        layer = resolve_layer(node["layer"], modules)
        for module in scopes:
            if within(layer, module):
                totals[module] += node["ms"]
    by_signature: dict[str, list[float]] = {}  # identical attention layers share a signature: average them
    for module, ms in totals.items():
        ms /= (calls or {}).get(module, 1)
        if ms > 0:
            by_signature.setdefault(scopes[module].key(), []).append(ms)
    return {key: statistics.fmean(values) for key, values in by_signature.items()}


def _trimmed_mean(values: list[float], cut: float = 0.1) -> float:
    ordered = sorted(values)
    k = int(len(ordered) * cut)
    kept = ordered[k:len(ordered) - k] or ordered
    return statistics.fmean(kept)


@dataclass
class Operator:
    """One conv/linear of the model and the groups that set its input and output widths."""

    name: str
    signature: OpSignature  # dense
    in_groups: list[str]
    out_groups: list[str]
    # Input channels this operator loses per root channel a group loses, where that is not 1: half behind
    # a gate (`a * sigmoid(b)` of a chunked conv), spatial positions for a Linear after a flatten.
    in_ratio: dict[str, float] = field(default_factory=dict)
    # The same for its output width as the signature counts it: a bidirectional recurrent layer's
    # signature counts hidden units, two output channels each.
    out_ratio: float = 1.0
    # Times the model's forward calls it (a conv applied at every step of a loop); its signature is its
    # first call's, and its time that call's times this.
    calls: int = 1


# The convolutions the table times (any spatial rank: the signature keeps every spatial dimension; a
# transposed conv's in_channels and out_channels are its input and output widths too).
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _signature(module: nn.Module, inp: torch.Tensor, out: torch.Tensor, batch: int) -> OpSignature | None:
    if isinstance(module, CONVOLUTIONS):
        return OpSignature("conv", batch, module.in_channels, module.out_channels, tuple(inp.shape[2:]),
                           tuple(out.shape[2:]), tuple(module.kernel_size), module.groups)
    if isinstance(module, nn.Linear):
        rows = _linear_rows(tuple(inp.shape[1:-1]), 1)
        return OpSignature("linear", batch, module.in_features, module.out_features, rows, rows)
    if isinstance(module, recurrent.RECURRENT) and inp.dim() == 3:
        steps = int(inp.shape[1] if module.batch_first else inp.shape[0])
        return OpSignature("recurrent", batch, module.input_size, module.hidden_size, (steps,), (steps,),
                           (recurrent.gates(module), module.num_layers, 2 if module.bidirectional else 1))
    return None


def _linear_rows(leading: tuple | list, batch: int) -> tuple[int, ...]:
    """A linear layer's signature keeps only how many rows one sample feeds it: ORT reshapes a 3-D
    MatMul input (batch, tokens, features) to 2-D (batch * tokens, features) for Gemm, so the
    profiler reports shapes the module hook never sees."""
    return (max(1, int(np.prod(leading)) // batch),)


def find_operators(graph: GroupGraph, batch: int) -> list[Operator]:
    """Every conv/linear with its real input shape (one forward pass) and the groups that size it."""
    model, calls = graph.model, {}  # module -> (input, output) of each of its calls, in call order
    names = {m: n for n, m in model.named_modules()}

    def hook(module, inputs, output):
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            output = output[0]  # nn.MultiheadAttention returns (output, weights), a recurrent layer (output, state)
        if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            calls.setdefault(module, []).append((inputs[0], output))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (*CONVOLUTIONS, nn.Linear, nn.MultiheadAttention, *recurrent.RECURRENT))]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(graph.example_input)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    in_groups: dict[nn.Module, set[str]] = {}
    out_groups: dict[nn.Module, set[str]] = {}
    in_ratio: dict[nn.Module, dict[str, float]] = {}
    for group in graph.groups:
        root_channels = len(group.tp_group[0][1]) if group.tp_group else 0
        for dep, idxs in group.tp_group:
            module = dep.target.module
            if graph.dg.is_out_channel_pruning_fn(dep.handler):
                out_groups.setdefault(module, set()).add(group.name)
                if isinstance(module, CONVOLUTIONS) and module.groups > 1 and module.groups == module.in_channels:
                    in_groups.setdefault(module, set()).add(group.name)  # depthwise: input follows output
            elif graph.dg.is_in_channel_pruning_fn(dep.handler):
                in_groups.setdefault(module, set()).add(group.name)
                seen = len({int(i) for i in idxs})  # behind a pixel shuffle r^2 root channels share one input
                if root_channels and seen != root_channels:
                    in_ratio.setdefault(module, {})[group.name] = seen / root_channels
    operators = []
    for module, called in calls.items():
        every = [_signature(module, *call, batch) for call in called]
        sig = every[0]
        if None not in every and len(set(every)) > 1:
            # One module called on several shapes (a head shared across pyramid levels): its per-call
            # time is an average over them, kept under a key of its own, not the first call's signature
            # that other models read from the cache.
            sig = replace(sig, spatial_in=tuple(d for c in every for d in c.spatial_in),
                          spatial_out=tuple(d for c in every for d in c.spatial_out))
        if sig is not None:
            out_ratio = 0.5 if isinstance(module, recurrent.RECURRENT) and module.bidirectional else 1.0
            operators.append(Operator(names[module], sig, sorted(in_groups.get(module, ())),
                                      sorted(out_groups.get(module, ())), in_ratio.get(module, {}), out_ratio,
                                      len(called)))
    for group in graph.groups:
        if group.kind == "heads" and group.attention in calls:
            query = calls[group.attention][0][0]
            mha = group.attention
            sequence = query.shape[1] if mha.batch_first and query.dim() == 3 else query.shape[0]
            sig = OpSignature("attention", batch, mha.num_heads, mha.num_heads, (int(sequence), mha.embed_dim),
                              (mha.head_dim,))
            operators.append(Operator(group.name, sig, [group.name], [group.name]))
    return operators


def operator_widths(op: Operator, removed: dict[str, int]) -> tuple[int, int]:
    """An operator's input/output widths once each group has lost `removed[group]` channels."""
    lost_out = round(sum(removed.get(g, 0) for g in op.out_groups) * op.out_ratio)
    lost_in = sum(round(removed.get(g, 0) * op.in_ratio.get(g, 1.0)) for g in op.in_groups)
    return max(op.signature.cin - lost_in, 1), max(op.signature.cout - lost_out, 1)


def widths_signature(op: Operator, removed: dict[str, int]) -> OpSignature:
    return op.signature.with_widths(*operator_widths(op, removed))


class LatencyTable:
    """In-context operator latencies, memoised in memory and on disk."""

    def __init__(self, fingerprint: dict, cache_path: Path | None):
        self.fingerprint = fingerprint
        self.cache_path = cache_path
        self.entries: dict[str, float] = {}
        self.variants_profiled = 0  # model variants this process had to build (0 on a cached rebuild)
        if cache_path is not None and cache_path.is_file():
            try:
                saved = json.loads(cache_path.read_text())
                if saved.get("fingerprint") == fingerprint:
                    self.entries = {k: float(v) for k, v in saved["entries"].items()}
            except (OSError, ValueError, KeyError, TypeError):
                self.entries = {}  # a damaged cache is rebuilt, never trusted

    @staticmethod
    def cache_file(cache_root: Path, fingerprint: dict) -> Path:
        keyed = {**fingerprint, "table_format": TABLE_FORMAT}
        digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
        return cache_root / "latency" / f"ops-{digest}.json"

    def missing(self, signatures: list[OpSignature]) -> list[OpSignature]:
        return [s for s in signatures if s.key() not in self.entries]

    def record(self, times: dict[str, float]) -> None:
        self.entries.update(times)

    def save(self) -> None:
        if self.cache_path is not None:
            write_json(self.cache_path, {"fingerprint": self.fingerprint, "entries": self.entries})

    def get(self, sig: OpSignature) -> float | None:
        return self.entries.get(sig.key())


class OperatorCurve:
    """One operator's measured ladder, interpolated in its cost coordinate."""

    def __init__(self, points: list[tuple[float, float]]):
        points = sorted(set(points))
        self.x = np.array([p[0] for p in points])
        self.y = np.array([p[1] for p in points])

    def __call__(self, coordinate: float) -> float:
        if len(self.x) == 1:
            return float(self.y[0] * coordinate / self.x[0])
        if coordinate <= self.x[0]:  # extrapolate along the first segment, never below zero
            slope = (self.y[1] - self.y[0]) / (self.x[1] - self.x[0])
            return float(max(self.y[0] + slope * (coordinate - self.x[0]), 0.0))
        if coordinate >= self.x[-1]:
            slope = (self.y[-1] - self.y[-2]) / (self.x[-1] - self.x[-2])
            return float(self.y[-1] + slope * (coordinate - self.x[-1]))
        return float(np.interp(coordinate, self.x, self.y))


def build_table(operators: list[Operator], ladder: list[dict[str, int]], group_channels: dict[str, int],
                table: LatencyTable, build_variant: Callable[[dict[str, int]], bytes],
                progress: Callable[[int], None] | None = None) -> dict[str, OperatorCurve]:
    """Profile every ladder variant whose operator signatures are not cached; return a curve per operator."""
    fp = table.fingerprint
    for widths in ladder:
        removed = {g: group_channels[g] - w for g, w in widths.items()}
        needed = [widths_signature(op, removed) for op in operators]
        if table.missing(needed):
            scopes = {op.name: sig for op, sig in zip(operators, needed)}
            table.record(profile_operator_times(build_variant(widths), fp["threads"], fp["batch_size"], fp["device"],
                                                scopes, {op.name: op.calls for op in operators}))
            table.variants_profiled += 1
            table.save()  # after every variant, so a killed run keeps what it measured
        if progress is not None:
            progress(1)
    curves = {}
    for op in operators:
        points = []
        for widths in ladder:
            sig = widths_signature(op, {g: group_channels[g] - w for g, w in widths.items()})
            value = table.get(sig)
            if value is not None:
                points.append((sig.cost_coordinate(), value * op.calls))
        if points:
            curves[op.name] = OperatorCurve(points)
    return curves
