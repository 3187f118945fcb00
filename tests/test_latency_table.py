"""The latency table: signatures read from ORT's profiler, the cache key, interpolation, level grid."""

import pytest
import torch

from deploycompress.allocation.latency_model import fit_affine
from deploycompress.allocation.spdy import level_widths
from deploycompress.latency import runtime
from deploycompress.latency.table import (LatencyTable, Operator, OperatorCurve, OpSignature,
                                          signatures_from_profile, widths_signature)


def _event(op, inputs, output, dur):
    return {"cat": "Node", "name": f"n_{op}_kernel_time", "dur": dur,
            "args": {"op_name": op, "input_type_shape": [{"float": s} for s in inputs],
                     "output_type_shape": [{"float": output}]}}


def test_profile_events_become_signatures():
    events = [
        _event("Conv", [[1, 32, 16, 16], [64, 32, 3, 3], [64]], [1, 64, 8, 8], 50),
        _event("Conv", [[1, 32, 16, 16], [64, 32, 3, 3], [64]], [1, 64, 8, 8], 70),
        _event("Conv", [[1, 48, 8, 8], [48, 1, 3, 3], [48]], [1, 48, 8, 8], 9),  # depthwise
        _event("Gemm", [[1, 128], [10, 128], [10]], [1, 10], 4),
        # A token MLP: ORT runs (1, 64, 128) x (128, 512) as a Gemm on (64, 128), or as a 3-D MatMul.
        _event("Gemm", [[64, 128], [512, 128], [512]], [64, 512], 30),
        _event("MatMul", [[1, 64, 128], [128, 512]], [1, 64, 512], 32),
        _event("Relu", [[1, 64, 8, 8]], [1, 64, 8, 8], 3),  # not a weighted op: ignored
        {"cat": "Session", "name": "model_run", "dur": 999},
    ]
    times = signatures_from_profile(events, batch=1)
    conv = OpSignature("conv", 1, 32, 64, (16, 16), (8, 8), (3, 3), 1)
    dw = OpSignature("conv", 1, 48, 48, (8, 8), (8, 8), (3, 3), 48)
    fc = OpSignature("linear", 1, 128, 10, (1,), (1,))
    mlp = OpSignature("linear", 1, 128, 512, (64,), (64,))
    assert times[conv.key()] == [0.05, 0.07]
    assert times[dw.key()] == [0.009] and dw.depthwise
    assert times[fc.key()] == [0.004]
    assert times[mlp.key()] == [0.030, 0.032]
    assert len(times) == 4


def test_operator_widths_follow_groups():
    op = Operator("layers.0.conv2", OpSignature("conv", 1, 32, 64, (16, 16), (16, 16), (3, 3), 1), ["a"], ["b"])
    assert widths_signature(op, {"a": 8, "b": 16}).cin == 24
    assert widths_signature(op, {"a": 8, "b": 16}).cout == 48
    dw = Operator("dw", OpSignature("conv", 1, 48, 48, (8, 8), (8, 8), (3, 3), 48), ["g"], ["g"])
    shrunk = widths_signature(dw, {"g": 16})
    assert (shrunk.cin, shrunk.cout, shrunk.groups) == (32, 32, 32)
    assert shrunk.cost_coordinate() == 32  # depthwise cost grows with width, not width squared


def test_consumers_lose_the_input_channels_they_see():
    """A conv behind a gate (`a * sigmoid(b)` of a chunked conv) sees half the gating conv's channels, and
    a Linear after a flatten every spatial position of each: each loses what it sees."""
    from torch import nn

    from deploycompress.graph import GroupGraph
    from deploycompress.latency.table import find_operators, operator_widths

    class GateThenFlatten(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Conv2d(3, 32, 3, padding=1)  # 16 values, 16 gates
            self.conv = nn.Conv2d(16, 8, 3, stride=2, padding=1)
            self.hidden = nn.Linear(8 * 4 * 4, 24)
            self.fc = nn.Linear(24, 10)

        def forward(self, x):
            a, b = self.gate(x).chunk(2, dim=1)
            y = torch.relu(self.conv(a * torch.sigmoid(b)))
            return self.fc(torch.relu(self.hidden(y.flatten(1))))

    graph = GroupGraph(GateThenFlatten().eval(), torch.zeros(1, 3, 8, 8), verify=True)
    assert graph.skipped == [] and graph["gate"].unit_size == 2
    ops = {op.name: op for op in find_operators(graph, batch=1)}
    removed = {"gate": 4 * 2, "conv": 2}  # root channels: 4 gated units, 2 conv channels
    assert operator_widths(ops["gate"], removed) == (3, 24)
    assert operator_widths(ops["conv"], removed) == (12, 6)
    assert operator_widths(ops["hidden"], removed) == (128 - 2 * 16, 24)


def test_cache_key_covers_runtime_and_shape():
    base = runtime.runtime_fingerprint(threads=1, batch_size=1)
    assert {"ort", "cpu", "isa", "threads", "batch_size", "device"} <= base.keys()
    root = __import__("pathlib").Path("/tmp/x")
    same = LatencyTable.cache_file(root, dict(base))
    assert LatencyTable.cache_file(root, base) == same
    for change in ({"threads": 2}, {"batch_size": 8}, {"ort": "0.0"}, {"isa": "sse2"}, {"device": "cuda"}):
        assert LatencyTable.cache_file(root, {**base, **change}) != same, change
    a = OpSignature("conv", 1, 32, 64, (16, 16), (8, 8), (3, 3), 1)
    assert a.key() != OpSignature("conv", 8, 32, 64, (16, 16), (8, 8), (3, 3), 1).key()
    assert a.key() != OpSignature("conv", 1, 32, 64, (32, 32), (16, 16), (3, 3), 1).key()


def test_table_persists_and_rejects_other_fingerprints(tmp_path):
    fp = runtime.runtime_fingerprint(1, 1)
    path = tmp_path / "ops.json"
    table = LatencyTable(fp, path)
    sig = OpSignature("linear", 1, 8, 4, (), ())
    assert table.missing([sig]) == [sig]
    table.record({sig.key(): 0.25})
    table.save()
    again = LatencyTable(fp, path)
    assert again.get(sig) == 0.25 and again.missing([sig]) == []
    assert LatencyTable({**fp, "threads": 2}, path).get(sig) is None
    path.write_text("{not json")
    assert LatencyTable(fp, path).entries == {}  # a damaged cache is rebuilt, never trusted


def test_curve_interpolates_and_extrapolates():
    curve = OperatorCurve([(100.0, 1.0), (400.0, 2.5), (900.0, 5.0)])
    assert curve(100.0) == pytest.approx(1.0)
    assert curve(250.0) == pytest.approx(1.75)
    assert curve(1000.0) == pytest.approx(5.0 + 2.5 / 500 * 100)
    assert curve(1.0) >= 0.0
    assert OperatorCurve([(10.0, 2.0)])(5.0) == pytest.approx(1.0)


def test_affine_fit_recovers_line():
    points = [(x, 0.3 + 0.8 * x) for x in (1.0, 2.0, 3.5)]
    offset, scale = fit_affine(points)
    assert offset == pytest.approx(0.3) and scale == pytest.approx(0.8)
    assert fit_affine([(2.0, 3.0)]) == (1.0, 1.0)


@pytest.mark.parametrize("channels,multiple,expected", [
    (32, 8, [32, 24, 16, 8]), (36, 8, [36, 32, 24, 16, 8]), (8, 8, [8, 6, 4, 2]), (3, 8, [3, 2, 1]),
    (24, 16, [24, 16]), (32, 16, [32, 16]), (16, 16, [16, 12, 8, 4])])
def test_level_widths(channels, multiple, expected):
    assert level_widths(channels, multiple) == expected


def test_level_widths_are_capped():
    widths = level_widths(512, 8)
    assert len(widths) <= 16 and widths[0] == 512 and widths[-1] == 8
    assert widths == sorted(widths, reverse=True) and all(w % 8 == 0 for w in widths)


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = torch.nn.Linear(32, 3)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(1))


def test_attention_heads_are_operators_timed_as_the_whole_module():
    import copy

    from deploycompress.graph import GroupGraph, apply_plan
    from deploycompress.latency.table import find_operators, profile_operator_times
    from deploycompress.onnx_export import export_bytes

    torch.manual_seed(0)
    model, x = _Attention().eval(), torch.randn(1, 10, 32)
    graph = GroupGraph(model, x)
    [op] = [o for o in find_operators(graph, batch=1) if o.signature.kind == "attention"]
    assert op.name == "attn" and op.in_groups == op.out_groups == ["attn"]
    assert (op.signature.cin, op.signature.spatial_in, op.signature.spatial_out) == (4, (10, 32), (8,))
    two_heads = widths_signature(op, {"attn": 2})
    assert two_heads.cin == 2 and two_heads.cost_coordinate() == 2  # cost grows with heads, not heads squared
    plan = {g.name: list(range(2 if g.kind == "heads" else g.channels)) for g in graph.groups}
    blob = export_bytes(apply_plan(copy.deepcopy(model), x, plan), x)
    times = profile_operator_times(blob, threads=1, batch=1, scopes={"attn": two_heads})
    assert times[two_heads.key()] > 0  # the module's nodes were found under its scope and summed


def test_latency_model_learns_each_operators_own_factor_from_measured_plans():
    from deploycompress.allocation.latency_model import LatencyModel

    # Two groups, one linear operator each; the table says 0.01 ms per channel for both.
    ops = [Operator(name, OpSignature("linear", 1, 64, 1, (), ()), [name], []) for name in ("a", "b")]
    curves = {name: OperatorCurve([(8.0, 0.08), (64.0, 0.64)]) for name in ("a", "b")}

    # In the model, operator a runs 1.5x its table time and b 0.7x, plus 0.2 ms of overhead.
    def truth(a, b):
        return 0.2 + 0.015 * a + 0.007 * b

    dense_ms = truth(64, 64)
    model = LatencyModel(ops, curves, {"a": 64, "b": 64}, dense_ms=dense_ms)
    for a, b in [(16, 64), (32, 64), (48, 64), (64, 16), (64, 32), (64, 48), (32, 32)]:
        model.add_measurement({"a": a, "b": b}, dense_ms / truth(a, b))
    unseen = {"a": 24, "b": 56}
    line = model.offset + model.scale * model.operator_sum(unseen)
    assert abs(line / truth(24, 56) - 1) > 0.04  # one line through the operator sum cannot tell a from b
    assert model.predict_ms(unseen) == pytest.approx(truth(24, 56), rel=0.02)
    assert model.predict_ms({"a": 56, "b": 24}) == pytest.approx(truth(56, 24), rel=0.02)
    # Leaving a measured plan out, the others still predict it.
    assert model.predict_ms_excluding({"a": 32, "b": 32}) == pytest.approx(truth(32, 32), rel=0.03)


def test_latency_model_without_measurements_is_the_table_plus_the_dense_offset():
    from deploycompress.allocation.latency_model import LatencyModel

    ops = [Operator(name, OpSignature("linear", 1, 64, 1, (), ()), [name], []) for name in ("a", "b")]
    curves = {name: OperatorCurve([(8.0, 0.08), (64.0, 0.64)]) for name in ("a", "b")}
    model = LatencyModel(ops, curves, {"a": 64, "b": 64}, dense_ms=1.5)
    assert model.predict_ms({}) == pytest.approx(1.5)
    assert model.predict_ms({"a": 32, "b": 64}) == pytest.approx(1.5 - 0.32)
    model.add_measurement({"a": 32, "b": 64}, 1.5 / 1.0)  # one measured plan: the line through both points
    assert model.predict_ms({"a": 32, "b": 64}) == pytest.approx(1.0)
    assert model.predict_ms_excluding({"a": 32, "b": 64}) == pytest.approx(1.5 - 0.32)


def test_a_cached_table_rebuilds_nothing_for_widths_off_the_runtime_block(tmp_path):
    """ORT's NCHWc layout pads channel counts to its block, so the profiler reports a 24 -> 40 conv with
    the shapes of a 32 -> 48 one. Operators are timed by module, so every width a ladder asks for is
    found in the cache on the second build, and the curves read back are the ones first measured."""
    import copy

    from deploycompress.graph import GroupGraph, apply_plan
    from deploycompress.latency.table import build_table, find_operators
    from deploycompress.onnx_export import export_bytes

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 40, 3, padding=1), torch.nn.BatchNorm2d(40), torch.nn.ReLU(),
                                torch.nn.Conv2d(40, 56, 3, padding=1), torch.nn.BatchNorm2d(56), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(56, 10)).eval()
    x = torch.zeros(1, 3, 16, 16)
    graph = GroupGraph(model, x)
    operators = find_operators(graph, batch=1)
    channels = {g.name: g.channels for g in graph.groups}
    ladder = [dict(channels), {name: c - 16 for name, c in channels.items()}]  # 24 and 40: off a 16 block

    def build_variant(widths):
        plan = {name: list(range(w)) for name, w in widths.items()}
        return export_bytes(apply_plan(copy.deepcopy(model), x, plan), x)

    fingerprint = runtime.runtime_fingerprint(threads=1, batch_size=1)
    cache = LatencyTable.cache_file(tmp_path, fingerprint)
    first = LatencyTable(fingerprint, cache)
    curves = build_table(operators, ladder, channels, first, build_variant)
    assert first.variants_profiled == 2 and len(curves) == len(operators) == 3
    assert all(len(curve.x) == 2 for curve in curves.values())  # both widths of every operator were found
    again = LatencyTable(fingerprint, cache)
    reread = build_table(operators, ladder, channels, again, build_variant)
    assert again.variants_profiled == 0
    assert {k: c.y.tolist() for k, c in reread.items()} == {k: c.y.tolist() for k, c in curves.items()}


def test_three_dimensional_convs_are_operators_timed_in_context():
    """A Conv3d is timed like any conv (every spatial dimension in its signature): left out, the table
    saw one of a two-conv3d model's three operators and predicted 1.32x for a plan measured at 2.25x."""
    from deploycompress.graph import GroupGraph
    from deploycompress.latency.table import find_operators, profile_operator_times
    from deploycompress.onnx_export import export_bytes

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv3d(16, 32, 3, padding=1, stride=2), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4 * 4, 5)).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    operators = {op.name: op for op in find_operators(GroupGraph(model, x), batch=1)}
    assert set(operators) == {"0", "2", "5"}
    second = operators["2"].signature
    assert (second.cin, second.cout, second.spatial_in, second.spatial_out, second.kernel) == \
        (16, 32, (8, 8, 8), (4, 4, 4), (3, 3, 3))
    assert operators["2"].in_groups == operators["0"].out_groups
    times = profile_operator_times(export_bytes(model, x), threads=1, batch=1,
                                   scopes={name: op.signature for name, op in operators.items()})
    assert all(times[op.signature.key()] > 0 for op in operators.values())  # each found under its module's scope


def test_transposed_convs_are_operators_timed_in_context():
    """An upsampling decoder's ConvTranspose2d layers are operators too (left out, the table saw three of
    a five-conv model's operators and predicted 1.88x for a plan measured at 2.12x)."""
    from deploycompress.graph import GroupGraph
    from deploycompress.latency.table import find_operators, profile_operator_times
    from deploycompress.onnx_export import export_bytes

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                                torch.nn.ConvTranspose2d(32, 16, 2, stride=2), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    operators = {op.name: op for op in find_operators(GroupGraph(model, x), batch=1)}
    assert set(operators) == {"0", "2", "4"}
    up = operators["2"]
    assert (up.signature.cin, up.signature.cout, up.signature.spatial_in, up.signature.spatial_out) == \
        (32, 16, (8, 8), (16, 16))
    assert up.in_groups == operators["0"].out_groups and up.out_groups == operators["4"].in_groups
    times = profile_operator_times(export_bytes(model, x), threads=1, batch=1,
                                   scopes={name: op.signature for name, op in operators.items()})
    assert all(times[op.signature.key()] > 0 for op in operators.values())


class _DictBlocks(torch.nn.Module):
    """Blocks held as nn.ModuleDicts and called by key, as many transformer codebases write them: the
    exporter scopes their modules by their own names ("/attn_1/...", "/mlp/mlp.0_1/..."), not their paths."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.ModuleDict(dict(
            attn=torch.nn.MultiheadAttention(32, 4, batch_first=True),
            mlp=torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))))
            for _ in range(2))

    def forward(self, x):
        for block in self.blocks:
            x = x + block["attn"](x, x, x, need_weights=False)[0]
            x = x + block["mlp"](x)
        return x.mean(1)


def test_modules_called_through_a_module_dict_are_timed_under_their_own_scope():
    """Every operator's nodes are found, the second block's under "_1" scopes: unresolved, the table
    timed none of a ViT's blocks (every group 0 ms) and predicted 1.12x for a plan measured at 2.13x."""
    import onnx

    from deploycompress.graph import GroupGraph
    from deploycompress.latency.table import find_operators, scope_times
    from deploycompress.onnx_export import export_bytes

    torch.manual_seed(0)
    model, x = _DictBlocks().eval(), torch.randn(1, 10, 32)
    operators = find_operators(GroupGraph(model, x), batch=1)
    assert {op.name for op in operators} == {f"blocks.{b}.{m}" for b in (0, 1) for m in ("attn", "mlp.0", "mlp.2")}
    blob = export_bytes(model, x)
    events = runtime.profiled_events(blob, 1, "cpu", 1, warmup=5, runs=20)
    graph = onnx.load_from_string(blob)
    for op in operators:  # one operator at a time: identical blocks share a signature
        assert scope_times(events, graph, {op.name: op.signature}).get(op.signature.key(), 0) > 0, op.name


class _SharedConv(torch.nn.Module):
    """One conv applied three times (weights shared across steps), and a twin of it applied once."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.shared = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU())
        self.twin = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        for _ in range(3):
            x = x + self.shared(x)
        return self.fc(self.twin(x).mean((2, 3)))


def test_a_conv_called_several_times_is_timed_over_all_its_calls():
    """The exporter scopes a module's later calls "shared.0_1", "shared.0_2"; the table counted only the
    first, so the DP saw a third of a shared conv's time and aimed at 7x for a 2x target (measured 12.98x).
    The cache keeps one call's time under the signature (the twin, called once, reads the same entry);
    the operator's curve is its calls' time."""
    import onnx

    from deploycompress.graph import GroupGraph
    from deploycompress.latency.table import build_table, find_operators, scope_times
    from deploycompress.onnx_export import export_bytes

    model, x = _SharedConv().eval(), torch.randn(1, 3, 8, 8)
    graph = GroupGraph(model, x)
    operators = {op.name: op for op in find_operators(graph, batch=1)}
    assert {name: op.calls for name, op in operators.items()} == {"stem": 1, "shared.0": 3, "twin": 1, "fc": 1}
    assert operators["shared.0"].signature == operators["twin"].signature
    blob = export_bytes(model, x)
    onnx_graph = onnx.load_from_string(blob)
    convs = [n.name for n in onnx_graph.graph.node if n.op_type == "Conv"]
    assert [n for n in convs if "shared" in n] == ["/shared/shared.0/Conv", "/shared/shared.0_1/Conv",
                                                   "/shared/shared.0_2/Conv"]
    runs = 8  # five warm-up runs are dropped
    events = [{"cat": "Session", "name": "model_run", "ts": 1000 * r} for r in range(runs)]
    events += [{"cat": "Node", "name": f"{node}_kernel_time", "ts": 1000 * r + 1, "dur": 100.0,
                "args": {"op_name": "Conv"}} for r in range(runs) for node in convs]
    shared = {"shared.0": operators["shared.0"].signature}
    key = shared["shared.0"].key()
    assert scope_times(events, onnx_graph, shared, {"shared.0": 3}) == {key: pytest.approx(0.1)}
    assert scope_times(events, onnx_graph, shared) == {key: pytest.approx(0.3)}  # without calls: all three

    class OneEntry:  # a cache holding one call's 0.1 ms under the shared signature
        fingerprint = {"threads": 1, "batch_size": 1, "device": "cpu"}
        variants_profiled = 0

        def missing(self, signatures):
            return []

        def get(self, sig):
            return 0.1 if sig.key() == shared["shared.0"].key() else None

    ops = [operators["shared.0"], operators["twin"]]
    curves = build_table(ops, [{g.name: g.channels for g in graph.groups}], {g.name: g.channels for g in graph.groups},
                         OneEntry(), lambda widths: b"")
    coordinate = shared["shared.0"].cost_coordinate()
    assert curves["shared.0"](coordinate) == pytest.approx(0.3) and curves["twin"](coordinate) == pytest.approx(0.1)


class _SharedAcrossScales(torch.nn.Module):
    """A head shared across two scales (as detection heads are across pyramid levels)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.head = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        both = self.head(x).mean((2, 3)) + self.head(torch.nn.functional.max_pool2d(x, 2)).mean((2, 3))
        return self.fc(both)


def test_a_module_called_on_several_shapes_keeps_its_own_cache_key():
    """Its per-call time is an average over its shapes: under the first call's signature it would
    read as a 16->16 conv at 8x8 to every other model sharing that cache entry."""
    from deploycompress.graph import GroupGraph
    from deploycompress.latency.table import find_operators

    graph = GroupGraph(_SharedAcrossScales().eval(), torch.zeros(1, 3, 8, 8))
    head = {op.name: op for op in find_operators(graph, batch=1)}["head"]
    assert head.calls == 2
    assert head.signature.spatial_in == (8, 8, 4, 4) and head.signature.spatial_out == (8, 8, 4, 4)
    assert head.signature.key() != OpSignature("conv", 1, 16, 16, (8, 8), (8, 8), (3, 3), 1).key()
    assert widths_signature(head, {"head": 4}).spatial_in == (8, 8, 4, 4)

