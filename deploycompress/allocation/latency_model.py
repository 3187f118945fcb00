"""Whole-model and per-group latency predictions from the in-context operator latency table."""
from __future__ import annotations

import numpy as np

from ..latency import runtime
from ..latency.table import LatencyTable, Operator, OperatorCurve, build_table, find_operators, widths_signature
from ..models.loading import cache_dir
from ..onnx_export import export_bytes
from ..progress import bar as progress_bar

LADDER = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)
# Ridge penalty on the per-operator corrections, as a fraction of the mean variance of an operator's time
# over the measured plans (so it does not depend on the model's size or speed). Chosen on the measured
# candidates of five saved runs on an Intel Xeon (resnet, vgg and mobilenet on digits; 21-40 plans each):
# leave-one-out median error 2.4-6.4% against 3.8-7.2% for the former shape-local offset fit, and the
# chosen plan against its profile 0.3-9.9% against 3.3-14.1%; 0.003 and 0.03 were within 1 point of it.
OPERATOR_RIDGE = 0.01


class LatencyModel:
    """latency(plan) = a + b * sum(operator times at plan) + sum(d_op * operator time at plan), fitted
    to whole-model measurements.

    The operator times come from the model itself (profiled in context), so before any candidate is
    measured the fit is a = measured dense latency - sum(dense operator times) (what the operators do
    not account for: session overhead, pooling, reorders) and b = 1, d = 0. Each measured candidate
    refits: (a, b) by least squares on the operator sum, then the per-operator corrections d by ridge
    regression on what the line leaves over, shrunk toward zero (OPERATOR_RIDGE).

    Why per operator: the table adds operators up one at a time from a ladder of *uniform* plans, and
    each operator's in-context time at a non-uniform plan is off by its own factor (ORT's kernel choice
    and NCHWc reorders move with its input and output widths separately). One line through every plan
    then predicted a plan of another shape 10-15% off (resnet_digits 1.5x on a Xeon: a global-ranking
    plan predicted 1.42x, measured 1.55x), which per-operator factors learned from the DP's own measured
    plans absorb.
    """

    def __init__(self, operators: list[Operator], curves: dict[str, OperatorCurve], group_channels: dict[str, int],
                 dense_ms: float, unit_sizes: dict[str, int] | None = None):
        self.operators = [op for op in operators if op.name in curves]
        self.curves = curves
        self.group_channels = group_channels  # in units (channels, channel sets of a grouped conv, heads)
        self.unit_sizes = unit_sizes or {}
        self.dense_ms = dense_ms
        self.times: list[np.ndarray] = [self.operator_times({})]  # per measured point: every operator's table time
        self.latencies: list[float] = [dense_ms]
        self.shapes: list[np.ndarray] = [self._shape({})]  # keep fraction of every group, per point
        self._fit = _fit(self.times, self.latencies)

    @property
    def points(self) -> list[tuple[float, float]]:
        """(operator sum, measured ms) of every point the model is fitted to, dense first."""
        return [(float(t.sum()), y) for t, y in zip(self.times, self.latencies)]

    @property
    def offset(self) -> float:
        return self._fit.offset

    @property
    def scale(self) -> float:
        return self._fit.scale

    def _op_ms(self, op: Operator, removed: dict[str, int]) -> float:
        return self.curves[op.name](widths_signature(op, removed).cost_coordinate())

    def removed(self, widths: dict[str, int]) -> dict[str, int]:
        """Root channels each group loses at these widths (widths are in units)."""
        return {g: (self.group_channels[g] - w) * self.unit_sizes.get(g, 1) for g, w in widths.items()}

    def operator_times(self, widths: dict[str, int]) -> np.ndarray:
        removed = self.removed(widths)
        return np.array([self._op_ms(op, removed) for op in self.operators])

    def operator_sum(self, widths: dict[str, int]) -> float:
        return float(self.operator_times(widths).sum())

    def _shape(self, widths: dict[str, int]) -> np.ndarray:
        return np.array([widths.get(g, c) / c for g, c in sorted(self.group_channels.items())])

    def add_measurement(self, widths: dict[str, int], speedup: float) -> None:
        """Record a whole-model measurement (as a speedup over dense, which is drift-free) and refit."""
        self.times.append(self.operator_times(widths))
        self.latencies.append(self.dense_ms / speedup)
        self.shapes.append(self._shape(widths))
        self._fit = _fit(self.times, self.latencies)

    def predict_ms(self, widths: dict[str, int]) -> float:
        return self._fit(self.operator_times(widths))

    def predict_ms_excluding(self, widths: dict[str, int]) -> float:
        """Prediction from a fit that leaves out this plan's own measurements: an honest error figure."""
        shape = self._shape(widths)
        keep = [i for i, s in enumerate(self.shapes) if i == 0 or np.abs(s - shape).mean() > 1e-9]
        fit = _fit([self.times[i] for i in keep], [self.latencies[i] for i in keep])
        return fit(self.operator_times(widths))

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


class _Fit:
    """latency = offset + scale * sum(x) + (x - x_mean) . corrections + residual_mean, x = operator times."""

    def __init__(self, offset: float, scale: float, x_mean: np.ndarray | None = None,
                 corrections: np.ndarray | None = None, residual_mean: float = 0.0):
        self.offset, self.scale = offset, scale
        self.x_mean, self.corrections, self.residual_mean = x_mean, corrections, residual_mean

    def __call__(self, times: np.ndarray) -> float:
        line = self.offset + self.scale * float(times.sum())
        if self.corrections is None:
            return line
        return line + self.residual_mean + float((times - self.x_mean) @ self.corrections)


def _fit(times: list[np.ndarray], latencies: list[float]) -> _Fit:
    """The line on the operator sum (fit_affine), then per-operator corrections by ridge regression on
    its residuals; none while fewer than three points or no operator's time varies."""
    offset, scale = fit_affine([(float(t.sum()), y) for t, y in zip(times, latencies)])
    if len(times) < 3:
        return _Fit(offset, scale)
    x = np.stack(times)
    residuals = np.asarray(latencies) - (offset + scale * x.sum(axis=1))
    x_mean = x.mean(axis=0)
    centred = x - x_mean
    gram = centred.T @ centred
    spread = float(np.mean(np.diag(gram)))
    if spread <= 1e-18:
        return _Fit(offset, scale)
    corrections = np.linalg.solve(gram + OPERATOR_RIDGE * spread * np.eye(len(x_mean)),
                                  centred.T @ (residuals - residuals.mean()))
    return _Fit(offset, scale, x_mean, corrections, float(residuals.mean()))


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
