"""Whole-model and per-group latency predictions from the in-context operator latency table."""
from __future__ import annotations

import numpy as np

from ..latency import runtime
from ..latency.table import LatencyTable, Operator, OperatorCurve, build_table, find_operators, widths_signature
from ..models.loading import cache_dir
from ..onnx_export import export_bytes
from ..progress import bar as progress_bar

LADDER = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)
# Local offset correction: a measured plan's residual weighs LOCAL_FLOOR + exp(-(d / LOCAL_SCALE)^2),
# d = mean |difference in keep fraction| between it and the plan predicted.
LOCAL_SCALE = 0.08
LOCAL_FLOOR = 0.05


class LatencyModel:
    """latency(plan) = a + b * sum(operator times at plan), with (a, b) fitted to whole-model measurements.

    The operator times come from the model itself (profiled in context), so before any candidate is
    measured the fit is a = measured dense latency - sum(dense operator times) (what the operators do
    not account for: session overhead, pooling, reorders) and b = 1. Each measured candidate refits
    (a, b) by least squares, which absorbs whatever the profiler's own overhead distorts.

    The fit is local: each prediction weighs the measured plans by how close their widths are to the
    plan asked about. The operator table adds operators up one at a time, and how far that is off
    depends on the plan's shape (two neighbouring groups cut hard interact; ORT's kernel choice moves
    with the widths): measured here, a fit to the DP's sharply shaped plans predicted a uniform plan
    18% slow, while plans of similar shape agreed within 2-3%.
    """

    def __init__(self, operators: list[Operator], curves: dict[str, OperatorCurve], group_channels: dict[str, int],
                 dense_ms: float, unit_sizes: dict[str, int] | None = None):
        self.operators = [op for op in operators if op.name in curves]
        self.curves = curves
        self.group_channels = group_channels  # in units (channels, channel sets of a grouped conv, heads)
        self.unit_sizes = unit_sizes or {}
        self.dense_ms = dense_ms
        self.dense_sum = self.operator_sum({})
        self.points: list[tuple[float, float]] = [(self.dense_sum, dense_ms)]
        self.shapes: list[np.ndarray] = [self._shape({})]  # keep fraction of every group, per point
        self.offset, self.scale = dense_ms - self.dense_sum, 1.0

    def _op_ms(self, op: Operator, removed: dict[str, int]) -> float:
        return self.curves[op.name](widths_signature(op, removed).cost_coordinate())

    def removed(self, widths: dict[str, int]) -> dict[str, int]:
        """Root channels each group loses at these widths (widths are in units)."""
        return {g: (self.group_channels[g] - w) * self.unit_sizes.get(g, 1) for g, w in widths.items()}

    def operator_sum(self, widths: dict[str, int]) -> float:
        removed = self.removed(widths)
        return sum(self._op_ms(op, removed) for op in self.operators)

    def _shape(self, widths: dict[str, int]) -> np.ndarray:
        return np.array([widths.get(g, c) / c for g, c in sorted(self.group_channels.items())])

    def add_measurement(self, widths: dict[str, int], speedup: float) -> None:
        """Record a whole-model measurement (as a speedup over dense, which is drift-free) and refit."""
        self.points.append((self.operator_sum(widths), self.dense_ms / speedup))
        self.shapes.append(self._shape(widths))
        self.offset, self.scale = fit_affine(self.points)

    def _local_fit(self, widths: dict[str, int], exclude_own: bool = False) -> tuple[float, float]:
        shape = self._shape(widths)
        distance = np.array([np.abs(s - shape).mean() for s in self.shapes])
        keep = distance > 1e-9 if exclude_own else np.ones(len(distance), dtype=bool)
        if not keep.any():
            keep[0] = True
        points = [p for p, k in zip(self.points, keep) if k]
        # The line (a, b) from every point; then its offset corrected by the residuals of the plans
        # nearest in shape (within a few % of keep fraction they count fully; distant ones, whose
        # residuals average out, keep the correction small). Nearby plans have nearly the same operator
        # sum, so they would pin an offset well but a slope badly. With every point kept, the line is the
        # one add_measurement already fitted (this runs on every prediction the DP's aim search makes).
        offset, scale = fit_affine(points) if exclude_own else (self.offset, self.scale)
        residuals = np.array([y - (offset + scale * x) for x, y in points])
        weights = LOCAL_FLOOR + np.exp(-(distance[keep] / LOCAL_SCALE) ** 2)
        return offset + float(np.average(residuals, weights=weights)), scale

    def predict_ms(self, widths: dict[str, int]) -> float:
        offset, scale = self._local_fit(widths)
        return offset + scale * self.operator_sum(widths)

    def predict_ms_excluding(self, widths: dict[str, int]) -> float:
        """Prediction from a fit that leaves out this plan's own measurements: an honest error figure."""
        offset, scale = self._local_fit(widths, exclude_own=True)
        return offset + scale * self.operator_sum(widths)

    def group_ms(self, group: str, widths: dict[str, int] | None = None) -> float:
        """The group's share of operator time (an operator between two groups counts half to each)."""
        removed = self.removed(widths or {})
        total = 0.0
        for op in self.operators:
            touching = set(op.in_groups) | set(op.out_groups)
            if group in touching:
                total += self._op_ms(op, removed) / len(touching)
        return total

    def unit_times(self, group: str, widths: list[int]) -> list[float]:
        """t[g][k]: the group's share at each candidate width with every other group dense."""
        return [self.group_ms(group, {group: w}) for w in widths]


def fit_affine(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (a, b) for latency = a + b * operator_sum, with b kept positive."""
    if len(points) < 2:
        x, y = points[0]
        return y - x, 1.0
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    if np.ptp(x) < 1e-9:
        return float(y.mean() - x.mean()), 1.0
    scale, offset = np.polyfit(x, y, 1)
    if scale <= 0:
        return float(y.mean() - x.mean()), 1.0
    return float(offset), float(scale)


def build_latency_model(problem) -> LatencyModel:
    """Profile the model's ladder of uniform widths (or read it from the cache) and wrap it in a fresh
    LatencyModel (fitted to the dense point only). The table is built once per problem."""
    parts = getattr(problem, "_latency_parts", None)
    if parts is None:
        parts = problem._latency_parts = _latency_parts(problem)
    operators, curves, channels, unit_sizes = parts
    return LatencyModel(operators, curves, channels, problem.meter.dense_ms, unit_sizes)


def _latency_parts(problem):
    meter = problem.meter
    fingerprint = runtime.runtime_fingerprint(meter.threads, meter.batch_size, meter.device)
    table = LatencyTable(fingerprint, LatencyTable.cache_file(cache_dir(), fingerprint))
    operators = find_operators(problem.graph, meter.batch_size)
    channels = {g.name: g.channels for g in problem.graph.groups}
    unit_sizes = {g.name: g.unit_size for g in problem.graph.groups}
    ladder = [problem.uniform_widths(r) for r in LADDER]

    def build_variant(widths: dict[str, int]) -> bytes:
        return export_bytes(meter.build(problem.plan_from_widths(widths)), meter.example_input)

    progress = progress_bar(len(ladder), "latency table", unit="variant")
    root_channels = {name: channels[name] * unit_sizes[name] for name in channels}
    root_ladder = [{name: w * unit_sizes[name] for name, w in widths.items()} for widths in ladder]
    curves = build_table(operators, root_ladder, root_channels, table,
                         lambda root_widths: build_variant({n: w // unit_sizes[n] for n, w in root_widths.items()}),
                         progress.update)
    progress.close()
    problem.notes.append(f"latency table: {len(operators)} operators, {len(ladder)} ladder variants, "
                         f"{table.variants_profiled} profiled now (the rest cached)")
    problem.latency_table_variants_profiled = table.variants_profiled
    return operators, curves, channels, unit_sizes
