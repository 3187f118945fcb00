"""Profile: dense vs compressed on ONNX Runtime, interleaved A/B rounds after a warm-up."""
from __future__ import annotations

import numpy as np

from ..context import RunContext
from ..latency import runtime
from .base import Stage


def onnx_accuracy(session, x, y) -> float | None:
    if y is None:
        return None
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: x[i:i + 256].numpy()})[0] for i in range(0, len(x), 256)])
    return float((logits.argmax(1) == y.numpy()).mean() * 100)


class ProfileStage(Stage):
    name = "profile"
    outputs = ()

    def run(self, ctx: RunContext) -> None:
        cfg = ctx.config.profile
        dense = runtime.make_session(ctx.run_dir / "dense.onnx", cfg.threads, ctx.config.device)
        compressed = runtime.make_session(ctx.run_dir / "model.onnx", cfg.threads, ctx.config.device)
        feed = runtime.random_feed(dense, cfg.batch_size, seed=ctx.config.seed)
        print(f"profile: {cfg.rounds} interleaved rounds, {cfg.threads} thread(s), batch {cfg.batch_size}")
        result = runtime.compare(dense, compressed, feed, rounds=cfg.rounds, warmup=cfg.warmup)
        ctx.report["latency"] = {"comparison": result.to_dict(), "fingerprint": runtime.runtime_fingerprint(
            cfg.threads, cfg.batch_size, ctx.config.device)}
        # Accuracy of what ships: the ONNX models themselves, on the held-out split.
        ctx.report["accuracy"] = {"dense": onnx_accuracy(dense, ctx.data.x_test, ctx.data.y_test),
                                  "compressed": onnx_accuracy(compressed, ctx.data.x_test, ctx.data.y_test)}

    def restore(self, ctx: RunContext) -> None:
        self.run(ctx)
