"""Where the time goes inside one model: ONNX Runtime's own profiler, aggregated by operator type,
by node and by layer (the PyTorch module a node came from).

Why the layer mapping walks the graph: at ORT_ENABLE_ALL (the level we deploy at) ORT fuses Conv +
BatchNorm + activation and rewrites convolutions to its NCHWc layout, and the fused node is named
after the *output tensor* of the chain, e.g. "/layers/layers.0/Relu_output_0_nchwc" for conv1 of
block 0. We find that tensor in the exported graph and walk back through the ops ORT fuses into a conv
(activations, BatchNorm, residual Add) to the conv itself, so the time lands on "layers.0.conv1",
the same module names the pruning plan uses. Nodes ORT inserts itself (layout reorders) have no
module; they are reported under "(onnxruntime)".

The profiler adds a little overhead per node and each node's figure is a median over runs, so the
sum of node times is close to, not equal to, the latency `measure` gives; quote latency from `measure`
and use the breakdown for where the time goes.
"""
from __future__ import annotations

import bisect
import re
import statistics
from collections import defaultdict
from pathlib import Path

import onnx

from . import runtime

# Ops that do the arithmetic a layer is named after.
COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "QLinearConv"}
# Ops ORT folds into the preceding compute op; their time belongs to that op's layer.
FUSED_INTO_COMPUTE = {"Relu", "Clip", "BatchNormalization", "Add", "Sum", "Sigmoid", "Mul", "HardSigmoid",
                      "HardSwish", "LeakyRelu", "Tanh"}
ORT_INSERTED = "(onnxruntime)"
TOP_LEVEL = "(top level)"
_KERNEL_SUFFIX = "_kernel_time"


def module_path(node_name: str) -> str:
    """Module scope of an exported node name -> the dotted PyTorch module name.

    "/layers.0/conv1/Conv" -> "layers.0.conv1". The TorchScript exporter writes a Sequential's child
    as "parent.index" under "parent" ("/layers/layers.0/conv2/Conv"), so a scope part that extends the
    previous one replaces it: -> "layers.0.conv2". The last part is the op, not a module.
    """
    parts = [p for p in node_name.strip("/").split("/")[:-1] if p]
    qualified: list[str] = []
    for part in parts:
        if qualified and part.startswith(qualified[-1] + "."):
            qualified[-1] = part
        else:
            qualified.append(part)
    return ".".join(qualified)


_OCCURRENCE = re.compile(r"^(.*)_(\d+)$")


def within(layer: str, module: str) -> bool:
    """Whether a layer path is the module or one of its submodules ("blocks.0.attn.out_proj" is within
    "blocks.0.attn"; "blocks.0.attn2" is not)."""
    return layer == module or layer.startswith(module + ".")


def resolve_layer(layer: str, module_names: list[str]) -> str:
    """The module a scope path names, where the exporter did not write its full path.

    A module reached through an nn.ModuleDict (`block["mlp"](x)`) or held in a plain attribute is
    scoped by its own name alone, not under its parent's, and its later calls get "_1", "_2"
    suffixes: the second block's "blocks.1.mlp.0" is exported as "/mlp/mlp.0_1". Such a path is
    matched to the modules whose names end with it, suffixes dropped, and the k-th suffix to the k-th
    of those in `module_names`' order (definition order, which repeated blocks are called in). Where
    one module alone matches, every suffix is a later call of that module (weights shared across
    steps: "shared.0_1", "shared.0_2"), and all its calls are its time: the operator table counted
    the first call alone, so a conv applied three times looked a third as prunable as it was (the DP's
    first plan at 2x measured 12.98x). A path that names a module already, or that matches none, is
    returned as it is."""
    if not layer or layer in module_names:
        return layer
    parts, occurrence, suffixed = [], 0, False
    for part in layer.split("."):
        match = _OCCURRENCE.match(part)
        if match:
            part, occurrence, suffixed = match.group(1), max(occurrence, int(match.group(2))), True
        parts.append(part)
    if not suffixed and any(within(layer, m) for m in module_names):
        return layer
    base = ".".join(parts)
    candidates = [m for m in module_names if m == base or m.endswith("." + base)]
    if len(candidates) == 1:
        return candidates[0]
    return candidates[occurrence] if occurrence < len(candidates) else layer


class LayerMap:
    """Maps the node names ORT reports (after its own fusions and renames) to module names."""

    def __init__(self, model: onnx.ModelProto | None):
        self._nodes: dict[str, onnx.NodeProto] = {}
        self._producer: dict[str, onnx.NodeProto] = {}
        if model is not None:
            for node in model.graph.node:
                self._nodes[node.name] = node
                for output in node.output:
                    self._producer[output] = node
        self._cache: dict[str, str] = {}

    def _anchor(self, name: str) -> onnx.NodeProto | None:
        """The exported node a profiled name stands for: the node itself, or the producer of the tensor
        ORT named a fused node after. ORT appends suffixes ("_nchwc", "_token_3"), so strip "_x" tails, and
        prefixes a Gemm it fused with its activation with "fused " ("fused /fc/Gemm")."""
        candidate = name.removeprefix("fused ")
        for _ in range(4):
            if candidate in self._nodes:
                return self._nodes[candidate]
            if candidate in self._producer:
                return self._producer[candidate]
            if "_" not in candidate:
                return None
            candidate = candidate.rsplit("_", 1)[0]
        return None

    def _compute_node(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """Walk back along the first input through ops ORT fuses into a conv, to the conv itself."""
        current = node
        for _ in range(4):
            if current.op_type in COMPUTE_OPS or current.op_type not in FUSED_INTO_COMPUTE or not current.input:
                break
            previous = self._producer.get(current.input[0])
            if previous is None:
                break
            current = previous
        return current if current.op_type in COMPUTE_OPS else node

    def layer(self, profiled_name: str) -> str:
        if profiled_name not in self._cache:
            anchor = self._anchor(profiled_name)
            if anchor is None:
                # No exported node: ORT inserted it, or we had no graph; fall back to the name's scope.
                unprefixed = profiled_name.removeprefix("fused ")
                scope = module_path(unprefixed) if "/" in unprefixed else ""
                self._cache[profiled_name] = scope or (ORT_INSERTED if self._nodes else TOP_LEVEL)
            else:
                self._cache[profiled_name] = module_path(self._compute_node(anchor).name) or TOP_LEVEL
        return self._cache[profiled_name]


def _ranked(times_ms: dict[str, float], total_ms: float, extra: dict[str, dict] | None = None) -> list[dict]:
    rows = []
    for key, ms in sorted(times_ms.items(), key=lambda item: -item[1]):
        row = {"name": key, "ms": ms, "share": ms / total_ms if total_ms else 0.0}
        row.update((extra or {}).get(key, {}))
        rows.append(row)
    return rows


def aggregate_events(events: list[dict], layer_map: LayerMap, warmup_runs: int = 0) -> dict:
    """ORT profiler node events -> ms per run by operator type, by node and by layer.

    Each node's figure is the median over the timed runs of its time in that run, so a run the OS
    preempted (common on shared machines) does not pile its stall onto whichever node it hit.
    The profiler records from session creation on; the first `warmup_runs` model runs (cold caches,
    first allocations) are dropped, using the "model_run" session events' time windows."""
    run_starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed_runs = len(run_starts) - warmup_runs
    if timed_runs < 1:
        raise ValueError(f"profile holds {len(run_starts)} runs; need more than the {warmup_runs} warm-up runs")
    per_run: dict[str, list[float]] = defaultdict(lambda: [0.0] * timed_runs)  # node -> us in each timed run
    node_info: dict[str, dict] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(_KERNEL_SUFFIX):
            continue
        run = bisect.bisect_right(run_starts, event.get("ts", 0)) - 1 - warmup_runs
        if run < 0:
            continue
        node = name[: -len(_KERNEL_SUFFIX)]
        per_run[node][run] += float(event.get("dur", 0))
        if node not in node_info:
            args = event.get("args", {})
            node_info[node] = {"op_type": args.get("op_name", "?"), "layer": layer_map.layer(node),
                               "provider": args.get("provider")}
    by_node = {node: statistics.median(times) / 1000.0 for node, times in per_run.items()}
    by_op: dict[str, float] = defaultdict(float)
    by_layer: dict[str, float] = defaultdict(float)
    op_nodes: dict[str, int] = defaultdict(int)
    layer_ops: dict[str, set] = defaultdict(set)
    for node, ms in by_node.items():
        info = node_info[node]
        by_op[info["op_type"]] += ms
        by_layer[info["layer"]] += ms
        op_nodes[info["op_type"]] += 1
        layer_ops[info["layer"]].add(info["op_type"])
    total_ms = sum(by_node.values())
    return {
        "runs": timed_runs,
        "total_ms": total_ms,
        "operators": _ranked(by_op, total_ms, {op: {"nodes": n} for op, n in op_nodes.items()}),
        "layers": _ranked(by_layer, total_ms, {k: {"op_types": sorted(v)} for k, v in layer_ops.items()}),
        "nodes": _ranked(by_node, total_ms, node_info),
    }


def _load_graph(model: str | Path | bytes) -> onnx.ModelProto | None:
    """The exported graph (without external weight data): only node and tensor names are needed."""
    try:
        if isinstance(model, bytes):
            return onnx.load_from_string(model)
        return onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - without the graph we still report per node and op type
        return None


def operator_breakdown(model: str | Path | bytes, threads: int = 1, batch_size: int = 1, device: str = "cpu",
                       runs: int = 20, warmup: int = 5, seed: int = 0) -> dict:
    """Run the model `warmup + runs` times under ORT's profiler and aggregate the timed runs."""
    events = runtime.profiled_events(model, threads, device, batch_size, warmup=warmup, runs=runs, seed=seed,
                                     stop_spinning=False)  # one session alone: ORT's default, as deployed
    return aggregate_events(events, LayerMap(_load_graph(model)), warmup_runs=warmup)


def time_outside(breakdown: dict, module_types: dict[str, str], reached: set[str], top: int = 3) -> str | None:
    """Where the time goes that pruning cannot shrink: "96% of the dense model's time is in layers no
    channel group reaches: lstm (LSTM) 95%, ..." from an `operator_breakdown` of the dense model, the type
    name of every module by name (in definition order) and the modules some group prunes. None when
    nothing was profiled."""
    total = breakdown["total_ms"]
    if not total:
        return None
    names = list(module_types)
    outside: dict[str, float] = defaultdict(float)
    for row in breakdown["layers"]:
        layer = resolve_layer(row["name"], names)
        if not any(within(layer, m) for m in reached):
            outside[layer] += row["ms"]
    largest = sorted(outside.items(), key=lambda item: -item[1])[:top]
    # A module some group prunes inside (a ShuffleNet unit's branches) is here for the ops its own
    # forward runs (concat, reshape, transpose), which "stages.1 (ShuffleUnit)" alone did not say.
    own_ops = {name for name, _ in largest if name and any(within(m, name) for m in reached)}
    listed = ", ".join(f"{_describe_layer(name, module_types, name in own_ops)} {ms / total:.0%}"
                       for name, ms in largest)
    return (f"{sum(outside.values()) / total:.0%} of the dense model's time is in layers no channel group "
            f"reaches: {listed}")


def _describe_layer(name: str, module_types: dict[str, str], own_ops: bool = False) -> str:
    if name in module_types:
        return f"{name} ({module_types[name]}{', the ops in its own forward' if own_ops else ''})"
    if name == ORT_INSERTED:  # no module: pruning reaches it only through the layout the model asks for
        return "layout reorders ONNX Runtime inserts"
    if name == TOP_LEVEL:
        return "ops in the model's own forward"
    return name


def profile_model(model: str | Path, threads: list[int], batch_sizes: list[int], device: str = "cpu",
                  rounds: int = 30, warmup: int = 10, profile_runs: int = 20, seed: int = 0) -> dict:
    """Latency (median, p90, spread over timed rounds) and the operator/layer breakdown for every
    (threads, batch size) pair. Latency is timed on a session without the profiler attached, one
    session at a time and with ORT's default thread pool (its workers spinning between runs, as a
    deployment of this one model runs): the spinning is stopped only where two sessions are timed in
    turn (runtime.stops_spinning)."""
    configs = []
    for thread_count in threads:
        for batch_size in batch_sizes:
            session = runtime.make_session(model, thread_count, device, stop_spinning=False)
            runtime.check_batch_size(session, batch_size)
            feed = runtime.random_feed(session, batch_size, seed=seed)
            stats = runtime.measure(session, feed, rounds=rounds, warmup=warmup)
            del session  # one model in memory at a time: the profiled session is next
            breakdown = operator_breakdown(model, thread_count, batch_size, device, runs=profile_runs,
                                           warmup=min(warmup, 5), seed=seed)
            configs.append({"threads": thread_count, "batch_size": batch_size,
                            "fingerprint": runtime.runtime_fingerprint(thread_count, batch_size, device,
                                                                       stop_spinning=False),
                            "latency": stats.to_dict(), "per_sample_ms": stats.median_ms / batch_size,
                            "breakdown": breakdown})
    info = runtime.cpu_info()
    return {"model": str(model), "device": device, "ort": runtime.ort.__version__,
            "cpu": {"model": info["model"], "isa": info["isa"], "machine": info["machine"]},
            "settings": {"rounds": rounds, "warmup": warmup, "profile_runs": profile_runs, "seed": seed},
            "configs": configs}


# ---- presentation: the same figures as a terminal table and as Markdown ------------------------------

def _sweep_rows(result: dict) -> list[list[str]]:
    rows = []
    for cfg in result["configs"]:
        lat = cfg["latency"]
        rows.append([str(cfg["threads"]), str(cfg["batch_size"]), f"{lat['median_ms']:.3f}", f"{lat['p90_ms']:.3f}",
                     f"{lat['spread']:.1%}", f"{cfg['per_sample_ms']:.3f}", str(lat["rounds"])])
    return rows


_SWEEP_HEADER = ["threads", "batch", "median ms", "p90 ms", "spread", "ms/sample", "rounds"]


def _breakdown_rows(rows: list[dict], top: int) -> list[list[str]]:
    return [[r["name"], f"{r['ms']:.3f}", f"{r['share']:.1%}"] for r in rows[:top]]


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def table_lines(result: dict, top: int = 10) -> list[str]:
    cpu = result["cpu"]
    lines = [f"{result['model']}: ONNX Runtime {result['ort']} on {result['device']}, CPU {cpu['model']} "
             f"({'+'.join(cpu['isa']) or 'no SIMD flags found'})", ""]
    lines += _text_table(_SWEEP_HEADER, _sweep_rows(result))
    first = result["configs"][0]
    where = f"threads {first['threads']}, batch {first['batch_size']}"
    for title, key in (("operator type", "operators"), ("layer", "layers")):
        rows = first["breakdown"][key]
        lines += ["", f"top {min(top, len(rows))} by {title} ({where}; ORT profiler, ms per run):"]
        lines += _text_table([title, "ms", "share"], _breakdown_rows(rows, top))
    return lines


def markdown(result: dict, top: int = 15) -> str:
    cpu = result["cpu"]
    lines = [f"# Latency profile: {Path(result['model']).name}", "",
             f"ONNX Runtime {result['ort']}, device {result['device']}, CPU {cpu['model']} "
             f"({'+'.join(cpu['isa'])}). {result['settings']['rounds']} timed rounds after "
             f"{result['settings']['warmup']} warm-up runs; spread = (p90 - p10) / median of the rounds.", "",
             "| " + " | ".join(_SWEEP_HEADER) + " |", "|---" + "|---:" * (len(_SWEEP_HEADER) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in _sweep_rows(result)]
    for cfg in result["configs"]:
        for title, key in (("operator type", "operators"), ("layer", "layers")):
            lines += ["", f"## By {title}: threads {cfg['threads']}, batch {cfg['batch_size']}", "",
                      f"| {title} | ms per run | share |", "|---|---:|---:|"]
            lines += ["| " + " | ".join(row) + " |" for row in _breakdown_rows(cfg["breakdown"][key], top)]
    lines += ["", "Figures hold for this CPU, runtime version, thread count and batch size only.", ""]
    return "\n".join(lines)
