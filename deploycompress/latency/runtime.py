"""ONNX Runtime sessions and timing discipline.

The rules come from measuring on shared 2-core machines (see MEASURING.md in the team notes): one
intra-op thread by default, warm up right before timing, compare two models by interleaving them
(A B A B ...) and quote the median of the per-round ratios, never absolute times from separate runs.
"""
from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import UserError

_ISA_FLAGS = ("avx512f", "avx512_vnni", "avx512bw", "avx2", "fma", "avx", "sse4_2", "amx_tile", "neon", "asimd")


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """CPU model and the instruction-set flags that change which kernels ORT picks."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key in ("flags", "Features"):
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"model": model, "isa": [f for f in _ISA_FLAGS if f in flags], "machine": platform.machine()}


# With more than one intra-op thread, a session's pool workers stop spinning when each Run returns
# (ORT's session.force_spinning_stop). Why: ORT's workers otherwise keep spinning after a Run, and in an
# interleaved A/B comparison the idle session's spinning workers take the cores the other session is
# timed on. Two threads on a 2-core Xeon, three zoo models against half-width copies
# (benchmarks/results/threads_spinning.md): with ORT's default the dense models ran 1.5-2.5x slower
# interleaved than alone, per-round ratios spread a median 82% (the profile trusts at most 25%) and the
# speedups came out a median 26% off the ratio of the sessions timed alone; with the spinning stopped,
# 7% and 1.3%. The price: a session alone runs back-to-back 1.1-1.3x slower (a worker wakes for each
# Run), its speedup alone within 1.6%. One thread has no pool: nothing changes there.
SPINNING_STOP_FROM_THREADS = 2


def stops_spinning(threads: int, stop_spinning: bool | None = None) -> bool:
    """Whether a session of `threads` threads stops its workers' spinning: `stop_spinning` where given,
    else from SPINNING_STOP_FROM_THREADS up. Given False where one session is timed alone (the profile
    command): nothing else runs then, and ORT's default is what a deployment of that model sees."""
    return threads >= SPINNING_STOP_FROM_THREADS if stop_spinning is None else stop_spinning


def runtime_fingerprint(threads: int, batch_size: int, device: str = "cpu", stop_spinning: bool | None = None) -> dict:
    """Everything a latency figure depends on besides the model: the key of every latency cache."""
    info = cpu_info()
    fingerprint = {"ort": ort.__version__, "cpu": info["model"], "isa": "+".join(info["isa"]),
                   "threads": threads, "batch_size": batch_size, "device": device}
    if stops_spinning(threads, stop_spinning):  # figures taken with spinning workers are not these: keyed apart
        fingerprint["spinning"] = "stopped after each run"
    return fingerprint


def providers_for(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise UserError("--device cuda: ONNX Runtime has no CUDA execution provider here "
                            f"(install onnxruntime-gpu on a machine with a GPU); available: {', '.join(available)}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise UserError(f"unknown device {device!r}; choose cpu or cuda")


def make_session(model: str | Path | bytes, threads: int = 1, device: str = "cpu",
                 profile_dir: str | None = None, stop_spinning: bool | None = None) -> ort.InferenceSession:
    """A session timed the way every figure here is taken; `stop_spinning` as `stops_spinning` reads it
    (benchmarks/threads.py sets it both ways to show why)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if stops_spinning(threads, stop_spinning):
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=providers_for(device))
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.NoSuchFile, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf) as exc:
        raise UserError(f"ONNX Runtime cannot load {model if not isinstance(model, bytes) else 'the model'}: "
                        f"{str(exc).splitlines()[0]}") from None


def profiled_events(model: str | Path | bytes, threads: int = 1, device: str = "cpu", batch_size: int = 1,
                    warmup: int = 0, runs: int | Callable[[ort.InferenceSession, dict], int] = 1,
                    seed: int = 0, stop_spinning: bool | None = None) -> list[dict]:
    """The events of ORT's profiler over `warmup` + `runs` runs of `model` on a random feed (`runs` may be
    a function of the warmed session and feed, to time a fixed span). The trace file lives in a
    temporary folder and is gone when this returns; the warm-up runs' events are included."""
    with tempfile.TemporaryDirectory(prefix="deploycompress-profile-") as tmp:
        session = make_session(model, threads, device, profile_dir=tmp, stop_spinning=stop_spinning)
        check_batch_size(session, batch_size)
        feed = random_feed(session, batch_size, seed=seed)
        for _ in range(warmup):
            session.run(None, feed)
        for _ in range(runs(session, feed) if callable(runs) else runs):
            session.run(None, feed)
        with open(session.end_profiling()) as handle:
            return json.load(handle)


def check_batch_size(session: ort.InferenceSession, batch_size: int) -> None:
    """A model exported with a fixed batch fails deep inside ORT for any other batch; say so up front."""
    for inp in session.get_inputs():
        fixed = inp.shape[0] if inp.shape else None
        if isinstance(fixed, int) and fixed != batch_size:
            raise UserError(f"input {inp.name!r} has a fixed batch of {fixed}; batch size {batch_size} needs a model "
                            "exported with a dynamic batch axis")


def random_feed(session: ort.InferenceSession, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input; symbolic dimensions other than batch become 1."""
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in session.get_inputs():
        shape = [batch_size if i == 0 else (d if isinstance(d, int) else 1) for i, d in enumerate(inp.shape)]
        if "int" in inp.type:
            feed[inp.name] = rng.integers(0, 2, size=shape).astype(np.int64)
        else:
            feed[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


@dataclass
class LatencyStats:
    median_ms: float
    p90_ms: float
    min_ms: float
    spread: float  # (p90 - p10) / median: how far the rounds disagree
    rounds: int
    samples_ms: list[float] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("samples_ms")
        return data


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summarize(samples_ms: list[float]) -> LatencyStats:
    median = statistics.median(samples_ms)
    spread = (_percentile(samples_ms, 90) - _percentile(samples_ms, 10)) / median if median > 0 else 0.0
    return LatencyStats(median, _percentile(samples_ms, 90), min(samples_ms), spread, len(samples_ms), samples_ms)


def _time_runs(session: ort.InferenceSession, feed: dict, runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, feed)
    return (time.perf_counter() - start) * 1000.0 / runs


def calibrate_runs(session: ort.InferenceSession, feed: dict, target_ms: float = 20.0) -> int:
    """How many back-to-back runs make one timing round last about `target_ms` (timer noise floor)."""
    per_run = max(_time_runs(session, feed, 3), 1e-3)
    return max(1, min(1000, int(target_ms / per_run)))


def measure(session: ort.InferenceSession, feed: dict, rounds: int = 30, warmup: int = 10,
            runs_per_round: int | None = None) -> LatencyStats:
    for _ in range(warmup):
        session.run(None, feed)
    runs = runs_per_round or calibrate_runs(session, feed)
    return summarize([_time_runs(session, feed, runs) for _ in range(rounds)])


@dataclass
class Comparison:
    """Interleaved A/B timing. speedup = latency(A) / latency(B), the median of per-round ratios."""

    a: LatencyStats
    b: LatencyStats
    speedup: float
    ci_low: float
    ci_high: float
    ratio_spread: float
    ratios: list[float] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "speedup": self.speedup,
                "ci95": [self.ci_low, self.ci_high], "ratio_spread": self.ratio_spread, "rounds": len(self.ratios)}


def bootstrap_median_ci(values: list[float], confidence: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    arr = np.asarray(values)
    medians = np.median(rng.choice(arr, size=(resamples, len(arr)), replace=True), axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def compare(session_a: ort.InferenceSession, session_b: ort.InferenceSession, feed_a: dict,
            feed_b: dict | None = None, rounds: int = 30, warmup: int = 10) -> Comparison:
    feed_b = feed_a if feed_b is None else feed_b
    for _ in range(warmup):
        session_a.run(None, feed_a)
        session_b.run(None, feed_b)
    runs_a, runs_b = calibrate_runs(session_a, feed_a), calibrate_runs(session_b, feed_b)
    times_a, times_b, ratios = [], [], []
    for _ in range(rounds):
        ta = _time_runs(session_a, feed_a, runs_a)
        tb = _time_runs(session_b, feed_b, runs_b)
        times_a.append(ta)
        times_b.append(tb)
        ratios.append(ta / tb)
    ratio_stats = summarize(ratios)
    low, high = bootstrap_median_ci(ratios)
    return Comparison(summarize(times_a), summarize(times_b), ratio_stats.median_ms, low, high,
                      ratio_stats.spread, ratios)


# Without a measured block (no NCHWc rewrite, or another execution provider) channel counts are kept on
# multiples of 8, which vectorised kernels generally reward.
DEFAULT_CHANNEL_MULTIPLE = 8


@lru_cache(maxsize=None)
def channel_block(device: str = "cpu") -> int:
    """The channel multiple this runtime computes in, read off ONNX Runtime itself.

    ORT's CPU provider rewrites convolutions to its NCHWc layout, padding channel counts up to its block
    (MLAS: 8 with AVX2, 16 with AVX-512), so a conv of 24 output channels costs what one of 32 does on
    an AVX-512 machine: measured here, the profiler reported a 24 -> 40 conv with the shapes of 32 -> 48.
    The block is read from the shapes ORT's profiler reports for a one-conv model with 8 output
    channels; DEFAULT_CHANNEL_MULTIPLE where no padding shows (no NCHWc rewrite) or off the CPU."""
    if device != "cpu":
        return DEFAULT_CHANNEL_MULTIPLE
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((DEFAULT_CHANNEL_MULTIPLE, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "block_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, DEFAULT_CHANNEL_MULTIPLE, 8, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    try:
        events = profiled_events(model.SerializeToString(), 1, "cpu")
    except (OSError, ValueError, UserError):
        return DEFAULT_CHANNEL_MULTIPLE
    padded = DEFAULT_CHANNEL_MULTIPLE
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and args.get("op_name") == "Conv":
            try:
                padded = max(padded, int(next(iter(args["input_type_shape"][1].values()))[0]))
            except (KeyError, IndexError, StopIteration, TypeError, ValueError):
                continue
    return padded
