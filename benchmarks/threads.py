"""Why a session with more than one intra-op thread stops its pool's spinning after each Run.

    python benchmarks/threads.py [--models a,b] [--threads 1,2] [--repeats 3] [--rounds 60]

For each zoo model, the dense model against a copy with every channel group cut to half its width
(random weights: only latency is measured), both exported to ONNX and timed with each thread count:
- alone: one session at a time, created, timed (runtime.measure) and dropped, as one deployed model runs;
- interleaved: A B A B rounds (runtime.compare), the way every speedup deploycompress reports is taken;
each with ORT's default (pool workers keep spinning after a Run) and with the spinning stopped when each
Run returns (session.force_spinning_stop, what runtime.make_session sets from two threads up), in fresh
sessions `--repeats` times. One thread has no pool: its rows are the reference.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch
from common import known, parse_list, write_results

MODES = {"spinning (ORT default)": False, "stopped after each run": True}


def half_width_pair(name: str) -> tuple[bytes, bytes, tuple[int, ...]]:
    from deploycompress.graph import GroupGraph, round_channels
    from deploycompress.latency.runtime import channel_block
    from deploycompress.models import create_model, model_registry
    from deploycompress.onnx_export import export_bytes

    torch.manual_seed(0)
    shape = (1, *model_registry.get(name).input_shape[1:])
    example = torch.zeros(shape)
    dense = create_model(name).eval()
    pruned = copy.deepcopy(dense)
    graph = GroupGraph(pruned, example)
    multiple = channel_block()
    graph.apply({g.name: list(range(round_channels(g.channels / 2, g.channels, g.unit_multiple(multiple))))
                 for g in graph.groups})
    return export_bytes(dense, example), export_bytes(pruned, example), shape


def time_pair(dense: bytes, pruned: bytes, threads: int, stop: bool | None, rounds: int) -> dict:
    from deploycompress.latency import runtime

    alone = {}
    for label, blob in (("a", dense), ("b", pruned)):  # one session alive at a time
        session = runtime.make_session(blob, threads, stop_spinning=stop)
        feed = runtime.random_feed(session, 1)
        alone[label] = runtime.measure(session, feed, rounds=rounds).median_ms
        del session
    a = runtime.make_session(dense, threads, stop_spinning=stop)
    b = runtime.make_session(pruned, threads, stop_spinning=stop)
    result = runtime.compare(a, b, runtime.random_feed(a, 1), rounds=rounds)
    return {"alone_a_ms": alone["a"], "alone_b_ms": alone["b"], "alone_ratio": alone["a"] / alone["b"],
            "interleaved_a_ms": result.a.median_ms, "interleaved_b_ms": result.b.median_ms,
            "speedup": result.speedup, "ci95": [result.ci_low, result.ci_high],
            "ci_width_pct": 100 * (result.ci_high - result.ci_low) / result.speedup,
            "ratio_spread_pct": 100 * result.ratio_spread}


def main() -> None:
    from deploycompress.models import model_registry

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet_digits,vgg_digits,mobilenet_digits")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="fresh session pairs per setting")
    parser.add_argument("--rounds", type=int, default=60, help="timed rounds per measurement")
    args = parser.parse_args()
    models = parse_list(parser, "--models", args.models, known(model_registry))
    thread_counts = parse_list(parser, "--threads", args.threads, int)
    if any(t < 1 for t in thread_counts) or args.repeats < 1 or args.rounds < 3:
        parser.error("--threads must be at least 1, --repeats at least 1, --rounds at least 3")
    records, rows = [], []
    for name in models:
        dense, pruned, shape = half_width_pair(name)
        for threads in thread_counts:
            modes = MODES if threads > 1 else {"no pool (one thread)": None}
            for mode, stop in modes.items():
                runs = []
                for repeat in range(args.repeats):
                    runs.append(time_pair(dense, pruned, threads, stop, args.rounds))
                    print(f"{name} threads {threads} {mode} #{repeat}: speedup {runs[-1]['speedup']:.2f}x, "
                          f"ratio spread {runs[-1]['ratio_spread_pct']:.0f}%", flush=True)
                records.append({"model": name, "input_shape": list(shape), "threads": threads, "mode": mode,
                                "runs": runs})
                median = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
                rows.append([name, threads, mode, median("alone_a_ms"), median("interleaved_a_ms"),
                             median("alone_ratio"), median("speedup"),
                             f"{min(r['speedup'] for r in runs):.2f}-{max(r['speedup'] for r in runs):.2f}",
                             f"{median('ci_width_pct'):.1f}", f"{max(r['ratio_spread_pct'] for r in runs):.0f}"])
    notes = [f"Dense zoo model against a half-width copy, batch 1, {args.rounds} rounds per measurement, "
             f"{args.repeats} fresh session pairs per row (medians over them; the speedup column's range is "
             "over them too). 'alone': one session at a time; 'interleaved': A B A B rounds, as every "
             "speedup deploycompress reports is measured. ORT keeps a pool's workers spinning after a Run by "
             "default; 'stopped after each run' sets session.force_spinning_stop, as runtime.make_session "
             "does from two threads up."]
    notes += summary(records)
    write_results("threads_spinning", {"records": records, "rounds": args.rounds, "repeats": args.repeats},
                  ["model", "threads", "pool workers", "dense ms alone", "dense ms interleaved",
                   "speedup alone", "speedup interleaved", "interleaved range", "CI width %",
                   "worst ratio spread %"], rows, notes)


def summary(records: list[dict]) -> list[str]:
    lines = []
    for mode in (*MODES, "no pool (one thread)"):
        runs = [(rec, r) for rec in records if rec["mode"] == mode for r in rec["runs"]]
        if not runs:
            continue
        inflation = [r["interleaved_a_ms"] / r["alone_a_ms"] for _, r in runs]
        agreement = [abs(r["speedup"] / r["alone_ratio"] - 1) * 100 for _, r in runs]
        lines.append(f"- {mode}: over {len(runs)} session pairs, ratio spread median "
                     f"{statistics.median(r['ratio_spread_pct'] for _, r in runs):.0f}% (worst "
                     f"{max(r['ratio_spread_pct'] for _, r in runs):.0f}%); the dense model's interleaved time "
                     f"{min(inflation):.2f}-{max(inflation):.2f}x its time alone; interleaved speedup off the "
                     f"ratio alone by a median {statistics.median(agreement):.1f}% (worst {max(agreement):.1f}%)")
    by_mode = {(rec["model"], rec["threads"], rec["mode"]): rec["runs"] for rec in records}
    slower, ratio_moves = [], []
    for (model, threads, mode), runs in by_mode.items():
        default = by_mode.get((model, threads, "spinning (ORT default)"))
        if mode == "stopped after each run" and default:
            slower.append(statistics.median(r["alone_a_ms"] for r in runs)
                          / statistics.median(r["alone_a_ms"] for r in default))
            ratio_moves.append(abs(statistics.median(r["alone_ratio"] for r in runs)
                                   / statistics.median(r["alone_ratio"] for r in default) - 1) * 100)
    if slower:
        lines.append(f"- The price, alone: with the spinning stopped the dense model's back-to-back runs take "
                     f"{min(slower):.2f}-{max(slower):.2f}x their time with ORT's default (a worker wakes for each "
                     f"Run); the speedup alone moves by at most {max(ratio_moves):.1f}%. The profile stage "
                     "trusts a verdict whose per-round ratios spread at most 25%.")
    return lines


if __name__ == "__main__":
    main()
