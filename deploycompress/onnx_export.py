"""PyTorch -> ONNX with a dynamic batch axis, constant weights, a full checker pass and a parity check.

We use the TorchScript-based exporter (`dynamo=False`): on this torch it exports a small CNN in a
quarter of a second against about five for the dynamo exporter, and the latency search exports
dozens of candidates. Weights stay constant initializers (not graph inputs), which ORT needs for its
NCHWc fast path. If a model cannot be traced that way we fall back to the dynamo exporter.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from . import multi_output
from .errors import UserError, first_line

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"


@contextlib.contextmanager
def _quiet():
    """The exporters print deprecation notes and progress lines a user cannot act on. And where the
    TorchScript exporter fails (the dynamo exporter then takes over), it dumps its whole IR graph from
    C++ ("Torch IR graph at exception: ..."), past any Python redirect: its ONNX log is switched on by
    every export (torch 2.13's setup_onnx_logging tests the function `_jit_is_onnx_log_enabled`, not its
    result), so the log call itself is silenced while we export."""
    log = torch._C._jit_onnx_log
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch._C._jit_onnx_log = lambda *args: None
        try:
            yield
        finally:
            torch._C._jit_onnx_log = log
            logging.getLogger("torch.onnx").setLevel(previous)


@contextlib.contextmanager
def _unfused_attention():
    """nn.MultiheadAttention / nn.TransformerEncoderLayer take a fused "fast path" in eval mode whose
    kernels (_native_multi_head_attention, ...) have no ONNX export; the unfused path computes the same."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def export_bytes(model: nn.Module, example_input: torch.Tensor, opset: int = OPSET) -> bytes:
    """Serialized ONNX model; raises UserError with the exporter's first line when export fails."""
    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    # a model of several outputs exports them as its forward returns them, one ONNX output each
    outputs = multi_output.output_names(model, OUTPUT_NAME)
    try:
        with _quiet(), torch.no_grad(), _unfused_attention(), multi_output.structured(model):
            try:
                torch.onnx.export(model, (example_input,), buffer, dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=outputs,
                                  dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
                                  do_constant_folding=True)
            except Exception as legacy:  # noqa: BLE001 - the legacy exporter cannot trace everything
                buffer = io.BytesIO()
                batch = torch.export.Dim("batch", min=1, max=4096)
                try:
                    program = torch.onnx.export(model, (example_input,), dynamo=True, opset_version=max(opset, 18),
                                                input_names=[INPUT_NAME], output_names=outputs,
                                                dynamic_shapes=({0: batch},), verbose=False)
                except Exception as dynamo:  # noqa: BLE001 - both failed: the model's own error comes first
                    # (the dynamo exporter's is often only that onnxscript is not installed)
                    raise UserError(f"ONNX export failed: {first_line(legacy, 300)} (the dynamo exporter: "
                                    f"{first_line(dynamo, 150)})") from None
                program.save(buffer)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any exporter failure is reported as one line
        raise UserError(f"ONNX export failed: {first_line(exc, 300)}") from None
    finally:
        model.train(was_training)
    return buffer.getvalue()


def check(model_bytes: bytes) -> onnx.ModelProto:
    """onnx.checker full check (shape inference included)."""
    proto = onnx.load_from_string(model_bytes)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"exported ONNX model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    return proto


def max_abs_diff(model: nn.Module, session, inputs: torch.Tensor) -> float:
    """Largest |PyTorch - ONNX Runtime| over the outputs for the same inputs."""
    model.eval()
    with torch.no_grad():
        expected = model(inputs).numpy()
    input_name = session.get_inputs()[0].name
    # token ids stay int64, as the exported model takes them
    feed = inputs.numpy().astype(np.float32) if inputs.is_floating_point() else inputs.numpy()
    actual = multi_output.join_outputs(session.run(None, {input_name: feed}))
    return float(np.abs(expected - actual).max())


def file_size(path: str | os.PathLike) -> int:
    return os.path.getsize(path)
