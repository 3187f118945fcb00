"""How long the latency table takes to build for a ResNet-18-size model at 32x32, and to rebuild cached.

    python benchmarks/latency_table.py
"""
from __future__ import annotations

import os
import tempfile
import time

import torch
from common import write_results


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DEPLOYCOMPRESS_CACHE"] = cache
        from deploycompress.allocation import AllocationProblem, SpeedupMeter
        from deploycompress.allocation.latency_model import build_latency_model
        from deploycompress.graph import GroupGraph
        from deploycompress.models.zoo import ResNet

        torch.manual_seed(0)
        model = ResNet(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), in_channels=3, num_classes=10).eval()
        example = torch.zeros(1, 3, 32, 32)
        graph = GroupGraph(model, example)
        meter = SpeedupMeter(model, example, threads=1, batch_size=1, rounds=10)
        scores = {g.name: torch.ones(g.channels) for g in graph.groups}
        from deploycompress.latency.runtime import channel_block

        multiple = channel_block()  # as the prune stage does when no recipe sets one
        problem = AllocationProblem(graph, scores, 2.0, 0.1, multiple, meter, lambda plan: 0.0, seed=0)
        rows, records = [], []
        for label in ("fresh", "cached"):
            problem._latency_parts = None  # forget the in-memory table: the disk cache is what is measured
            start = time.perf_counter()
            latency_model = build_latency_model(problem)
            seconds = time.perf_counter() - start
            records.append({"build": label, "seconds": seconds,
                            "variants_profiled": problem.latency_table_variants_profiled,
                            "operators": len(latency_model.operators)})
            rows.append([label, seconds, problem.latency_table_variants_profiled, len(latency_model.operators)])
    notes = ["ResNet-18 layout (widths 64-128-256-512, 2-2-2-2 basic blocks), 3x32x32 input, batch 1, "
             "ONNX Runtime CPU with 1 intra-op thread; dense latency "
             f"{meter.dense_ms:.2f} ms; ladder widths on multiples of {multiple} (the runtime's channel block). "
             "Budget: fresh <= 60 s, cached <= 2 s."]
    write_results("latency_table", {"records": records, "dense_ms": meter.dense_ms},
                  ["build", "seconds", "variants profiled", "operators"], rows, notes)


if __name__ == "__main__":
    main()
