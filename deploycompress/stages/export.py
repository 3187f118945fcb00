"""Export: dense and compressed models to ONNX, onnx.checker full check, PyTorch vs ORT parity."""
from __future__ import annotations

import json

from ..context import RunContext
from ..errors import UserError
from ..fileio import write_bytes, write_json
from ..latency import runtime
from ..onnx_export import OPSET, check, export_bytes, max_abs_diff
from .base import Stage

PARITY_TOLERANCE = 1e-3  # absolute, on the model's outputs


class ExportStage(Stage):
    name = "export"
    outputs = ("dense.onnx", "model.onnx", "onnx.json")

    def run(self, ctx: RunContext) -> None:
        # Parity on a real batch of several samples also exercises the dynamic batch axis.
        x = ctx.data.x_test[:32]
        parity = {}
        for label, model, filename in (("dense", ctx.dense, "dense.onnx"), ("compressed", ctx.model, "model.onnx")):
            blob = export_bytes(model, ctx.example_input)
            proto = check(blob)
            session = runtime.make_session(blob, threads=1)
            diff = max_abs_diff(model, session, x)
            if not diff <= PARITY_TOLERANCE:
                raise UserError(f"ONNX parity check failed for the {label} model: max |torch - ORT| = {diff:.3g} "
                                f"> {PARITY_TOLERANCE}")
            write_bytes(ctx.run_dir / filename, blob)
            parity[label] = {"max_abs_diff": diff, "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                             "bytes": len(blob)}
        self._record(ctx, parity)

    def restore(self, ctx: RunContext) -> None:
        saved = json.loads((ctx.run_dir / "onnx.json").read_text())
        ctx.report["onnx"] = saved

    def _record(self, ctx: RunContext, parity: dict) -> None:
        summary = {"max_abs_diff": max(p["max_abs_diff"] for p in parity.values()), "tolerance": PARITY_TOLERANCE,
                   "opset": parity["compressed"]["opset"], "requested_opset": OPSET,
                   "bytes": {k: v["bytes"] for k, v in parity.items()},
                   "max_abs_diff_by_model": {k: v["max_abs_diff"] for k, v in parity.items()}}
        write_json(ctx.run_dir / "onnx.json", summary)
        ctx.report["onnx"] = summary
