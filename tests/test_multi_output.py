"""Models whose forward returns several tensors: what the run sees (one flat tensor per batch, each
output's loss of its own) and what ships (the ONNX model returns the user's outputs, one each)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from conftest import assert_meets_target
from deploycompress import load_compressed
from deploycompress.errors import UserError
from deploycompress.model_outputs import output_modules
from deploycompress.models.loading import build_user_model
from deploycompress.multi_output import flatten_outputs, layout_of, output_layout, structured
from deploycompress.onnx_export import export_bytes
from deploycompress.pipeline import run_pipeline
from deploycompress.recipe import FinetuneConfig, ProfileConfig, PruneConfig, RunConfig
from deploycompress.training import distillation_losses

ARCHS = Path(__file__).parent / "archs"
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def detector(factory: str = "make") -> nn.Module:
    torch.manual_seed(0)
    return build_user_model(f"{ARCHS}/detector.py:{factory}", 10).eval()


def flat(factory: str = "make") -> nn.Module:
    model = detector(factory)
    with torch.no_grad():
        flatten_outputs(model, output_layout(model(X[:1]), 1, "test"))
    return model


def test_the_layout_names_each_output_and_its_shape():
    layout = output_layout(detector()(X[:1]), 1, "test")
    assert layout.names == ("output_0", "output_1")
    assert layout.shapes == ((10, 16, 16), (4, 16, 16))
    assert output_layout(detector("named")(X[:1]), 1, "test").names == ("scores", "boxes")
    nested = output_layout((X[:1, 0], {"a": X[:1], "b": (X[:1, 1], X[:1, 2])}), 1, "test")
    assert nested.names == ("output_0", "output_1_a", "output_1_b_0", "output_1_b_1")
    assert output_layout(X[:1], 1, "test") is None


@pytest.mark.parametrize("out, message", [
    ((X[:1], X.sum()), r"output output_1 has shape \(\), not the batch \(1\) first"),
    ((X[:1], X[:2]), r"output output_1 has shape \(2, 3, 32, 32\), not the batch \(1\) first"),
    ((X[:1], X[:1].argmax(1)), r"output output_1 holds int64, not floats"),
    ((X[:1], None), r"forward returns a NoneType among its outputs"),
    ({}, r"forward returns a dict holding no tensor"),
])
def test_outputs_the_run_cannot_use_are_one_line_each(out, message):
    with pytest.raises(UserError, match=message):
        output_layout(out, 1, "--model m.py:make")


def test_the_flat_forward_concatenates_and_structured_gives_the_users_outputs_back():
    dense, model = detector(), flat()
    with torch.no_grad():
        scores, boxes = dense(X)
        joined = model(X)
        assert torch.equal(joined, torch.cat([scores.flatten(1), boxes.flatten(1)], 1))
        assert [torch.equal(a, b) for a, b in zip(layout_of(model).split(joined), (scores, boxes))] == [True, True]
        with structured(model):
            assert isinstance(model(X), tuple)
        copied = copy.deepcopy(model)
        assert torch.equal(copied(X), joined) and layout_of(copied) == layout_of(model)
    # the user's names everywhere: state_dict keys, module names, the class name
    assert list(model.state_dict()) == list(dense.state_dict())
    assert type(model).__name__ == "Detector"
    assert layout_of(dense) is None


def test_each_output_is_distilled_in_its_own_shape():
    """A softmax over one output's classes must not run over the other's box values: the per-output
    loss is the sum of each output's own, and differs from one loss over the concatenation."""
    model = flat()
    layout = layout_of(model)
    with torch.no_grad():
        teacher = model(X)
    student = teacher + 0.3 * torch.randn(teacher.shape, generator=torch.Generator().manual_seed(1))
    parts = zip(layout.split(student), layout.split(teacher))
    expected = sum(distillation_losses(s, t) for s, t in parts)
    losses = distillation_losses(student, teacher, layout=layout)
    assert torch.allclose(losses, expected)
    assert not torch.allclose(losses, distillation_losses(student, teacher))
    assert torch.allclose(distillation_losses(teacher, teacher, layout=layout), torch.zeros(len(X)), atol=1e-5)


def test_training_outputs_unlike_eval_outputs_are_one_line():
    model = flat()
    layout = layout_of(model)
    with pytest.raises(UserError, match="outputs in training mode .* are not the 3584 it returns in eval mode"):
        distillation_losses(torch.zeros(3, 7), torch.zeros(3, 7), layout=layout)


def test_both_heads_are_output_layers_and_the_export_returns_both():
    model = flat()
    assert {id(m) for m in output_modules(model, X[:1])} == {id(model.classes), id(model.boxes)}
    session = ort.InferenceSession(export_bytes(model, X[:1]), providers=["CPUExecutionProvider"])
    assert [(o.name, o.shape[1:]) for o in session.get_outputs()] == [("output_0", [10, 16, 16]),
                                                                       ("output_1", [4, 16, 16])]
    named = flat("named")
    session = ort.InferenceSession(export_bytes(named, X[:1]), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["scores", "boxes"]
    assert layout_of(named) is not None  # the export put the flat forward back


def compress(tmp_path: Path, factory: str, **extra) -> dict:
    config = RunConfig(
        model=f"{ARCHS}/detector.py:{factory}", input_shape="1,3,32,32", data="none", target_speedup=2.0,
        out=str(tmp_path / "run"),
        prune=PruneConfig(policy="uniform", search_rounds=5, calibration_samples=32, max_overshoot=0.9),
        finetune=FinetuneConfig(epochs=1), profile=ProfileConfig(rounds=10, warmup=3), **extra)
    return run_pipeline(config)


def test_a_detector_is_compressed_and_ships_both_outputs(tmp_path):
    report = compress(tmp_path, "make")
    assert_meets_target(report)
    assert report["onnx"]["max_abs_diff"] <= report["onnx"]["tolerance"]
    assert report["params"]["compressed"] < report["params"]["dense"]
    # the heads keep their widths; the backbone is pruned
    assert {"classes", "boxes"} <= set(report["ignored_modules"])
    assert any(layer["channels_after"] < layer["channels_before"] for layer in report["layers"])
    per_output = report["outputs"]["per_output"]
    assert [(o["name"], o["shape"]) for o in per_output] == [("output_0", [10, 16, 16]), ("output_1", [4, 16, 16])]
    assert all(o["relative_rms_error"] is not None for o in per_output)
    assert any("forward returns 2 outputs" in note for note in report["notes"])
    # what ships: model.onnx returns the two outputs, and load_compressed rebuilds the same network
    run_dir = tmp_path / "run"
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    shipped = session.run(None, {session.get_inputs()[0].name: X.numpy()})
    assert [o.shape for o in shipped] == [(3, 10, 16, 16), (3, 4, 16, 16)]
    model = load_compressed(run_dir, detector())
    with torch.no_grad():
        scores, boxes = model(X)
    assert np.allclose(scores.numpy(), shipped[0], atol=1e-4) and np.allclose(boxes.numpy(), shipped[1], atol=1e-4)


def test_labelled_data_needs_one_output(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((64, 3, 32, 32)).astype(np.float32),
             y=rng.integers(0, 10, 64))
    config = RunConfig(model=f"{ARCHS}/detector.py:make", data=str(tmp_path / "data.npz"), target_speedup=2.0,
                       out=str(tmp_path / "run"))
    with pytest.raises(UserError, match="returns 2 outputs .* has labels, which score one output"):
        run_pipeline(config)


def test_a_classifier_returning_a_dict_trains_on_labels(tmp_path):
    from deploycompress.context import build_context

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((64, 3, 32, 32)).astype(np.float32),
             y=rng.integers(0, 10, 64))
    config = RunConfig(model=f"{ARCHS}/detector.py:dict_classifier", data=str(tmp_path / "data.npz"),
                       target_speedup=2.0, out=str(tmp_path / "run"))
    ctx = build_context(config, tmp_path / "run")
    assert ctx.report["accuracy"]["dense"] is not None
    assert layout_of(ctx.dense).names == ("logits",)
    session = ort.InferenceSession(export_bytes(ctx.dense, ctx.example_input), providers=["CPUExecutionProvider"])
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("logits", ["batch", 10])]


def test_top1_methods_refuse_several_outputs_in_one_line():
    from deploycompress.criteria.dcp import DCP
    from deploycompress.graph import GroupGraph
    from deploycompress.importance import ScoringContext
    from deploycompress.tiles import tiles_report

    model = flat()
    with pytest.raises(UserError, match=r"tiles scores top-1 agreement .* returns 2 outputs \(output_0"):
        tiles_report(model, X, None, (4, 4), 0.5)
    with torch.no_grad():
        teacher = model(X)
    scoring = ScoringContext(model, GroupGraph(model, X[:1]), X, None, teacher)
    with pytest.raises(UserError, match=r"--importance dcp .* returns 2 outputs"):
        DCP().prepare(scoring)
