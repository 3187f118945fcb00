"""`deploycompress compare A.onnx B.onnx`: interleaved A/B timing and a speedup verdict with a 95% CI.

Exit codes: 0 a verdict was given (faster, slower or no significant difference); 2 bad input;
3 no verdict, because the rounds disagreed too much even after one retry with twice the rounds."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from ..gate import DEFAULT_MAX_CI_WIDTH, DEFAULT_MAX_RATIO_SPREAD, measurement_problem
from . import app
from .profile import DEVICE_HELP, ROUNDS_HELP, WARMUP_HELP, Device, existing_model

NO_VERDICT_EXIT = 3


def _matching_feeds(session_a, session_b, batch_size: int, seed: int) -> tuple[dict, dict]:
    """The same random input for both models; their inputs must agree in shape (names may differ)."""
    from ..latency import runtime

    runtime.check_batch_size(session_a, batch_size)
    runtime.check_batch_size(session_b, batch_size)
    inputs_a, inputs_b = session_a.get_inputs(), session_b.get_inputs()
    shape = lambda inp: [d if isinstance(d, int) else "?" for d in inp.shape[1:]]  # noqa: E731 - batch may differ
    if [shape(i) for i in inputs_a] != [shape(i) for i in inputs_b]:
        raise UserError("A and B take different inputs: "
                        f"{[i.shape for i in inputs_a]} vs {[i.shape for i in inputs_b]}; compare variants of one model")
    feed_a = runtime.random_feed(session_a, batch_size, seed=seed)
    feed_b = {b.name: feed_a[a.name] for a, b in zip(inputs_a, inputs_b)}
    return feed_a, feed_b


def verdict_line(speedup: float, ci_low: float, ci_high: float) -> str:
    """speedup = latency(A) / latency(B): above 1 means B is faster."""
    ci = f"95% CI {ci_low:.2f}-{ci_high:.2f}x"
    if ci_low > 1.0:
        return f"verdict: B is faster than A: speedup {speedup:.2f}x ({ci})"
    if ci_high < 1.0:
        return f"verdict: B is slower than A: speedup {speedup:.2f}x ({ci}); A is {1 / speedup:.2f}x faster"
    return f"verdict: no significant difference: speedup {speedup:.2f}x ({ci} includes 1.0)"


@app.command("compare")
def compare(
    model_a: Path = typer.Argument(..., help="Baseline ONNX model (A), e.g. dense.onnx."),
    model_b: Path = typer.Argument(..., help="Candidate ONNX model (B), e.g. model.onnx."),
    rounds: int = typer.Option(30, min=5, help=ROUNDS_HELP + " A retry uses twice as many."),
    warmup: int = typer.Option(10, min=0, help=WARMUP_HELP),
    threads: int = typer.Option(1, min=1, help="ONNX Runtime intra-op threads for both models."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Batch size of the random input."),
    device: Device = typer.Option(Device.cpu, help=DEVICE_HELP),
    max_ci_width: float = typer.Option(DEFAULT_MAX_CI_WIDTH, min=0.0,
                                       help="Refuse a verdict when the 95% CI is wider than this fraction of the median."),
    max_ratio_spread: float = typer.Option(DEFAULT_MAX_RATIO_SPREAD, min=0.0,
                                           help="Refuse a verdict when (p90 - p10) / median of the per-round ratios exceeds this."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the figures and verdict as JSON."),
    seed: int = typer.Option(0, help="Seed of the random input."),
) -> None:
    """Interleaved A/B timing (A B A B ... after a warm-up); speedup = latency(A) / latency(B)."""
    from ..fileio import write_json
    from ..latency import host, runtime

    session_a = runtime.make_session(existing_model(model_a), threads, device.value)
    session_b = runtime.make_session(existing_model(model_b), threads, device.value)
    feed_a, feed_b = _matching_feeds(session_a, session_b, batch_size, seed)
    print(f"compare: {rounds} interleaved rounds, {threads} thread(s), batch {batch_size}, {device.value}")
    before = host.snapshot()
    result = runtime.compare(session_a, session_b, feed_a, feed_b, rounds=rounds, warmup=warmup)
    problem = measurement_problem(result.speedup, (result.ci_low, result.ci_high), result.ratio_spread,
                                  max_ci_width, max_ratio_spread)
    attempts = [result.to_dict()]
    if problem:
        # One retry: a burst of load from another process often explains a noisy first pass.
        print(f"rounds disagree ({problem}); measuring again with {2 * rounds} rounds")
        result = runtime.compare(session_a, session_b, feed_a, feed_b, rounds=2 * rounds, warmup=warmup)
        problem = measurement_problem(result.speedup, (result.ci_low, result.ci_high), result.ratio_spread,
                                      max_ci_width, max_ratio_spread)
        attempts.append(result.to_dict())
    host_load = host.load_between(before, host.snapshot())
    print(f"A {model_a}: median {result.a.median_ms:.3f} ms (p90 {result.a.p90_ms:.3f}, spread {result.a.spread:.1%})")
    print(f"B {model_b}: median {result.b.median_ms:.3f} ms (p90 {result.b.p90_ms:.3f}, spread {result.b.spread:.1%})")
    verdict = None if problem else verdict_line(result.speedup, result.ci_low, result.ci_high)
    print(verdict or f"no verdict: the rounds disagree too much ({problem}); measured {result.speedup:.2f}x, "
                     "not a figure to rely on. Rerun when the machine is quiet (limits: --max-ci-width, "
                     "--max-ratio-spread).")
    busy = host.busy_text(host_load)
    if busy:
        print(f"note: {busy}")
    if json_path is not None:
        write_json(json_path, {"a": str(model_a), "b": str(model_b), "threads": threads, "batch_size": batch_size,
                               "runtime": runtime.runtime_fingerprint(threads, batch_size, device.value),
                               "comparison": result.to_dict(), "attempts": attempts, "host_load": host_load,
                               "trusted": problem is None, "problem": problem, "verdict": verdict})
    if problem:
        raise typer.Exit(NO_VERDICT_EXIT)
