"""One small end-to-end run of the built-in default, and the run command's handling of bad input."""
import json
import subprocess

import numpy as np
import onnx
import pytest
import torch

from deploycompress.latency import runtime

REQUIRED = ["target_speedup", "speedup.measured", "latency_ms.dense", "latency_ms.compressed", "threads",
            "batch_size", "params.dense", "params.compressed", "macs.dense", "macs.compressed", "accuracy.dense",
            "accuracy.compressed", "onnx.max_abs_diff", "stages", "layers", "speedup.predicted",
            "latency_ms.predicted", "policy", "outputs.relative_rms_error", "outputs.top1_agreement"]


def _get(report, dotted):
    node = report
    for part in dotted.split("."):
        node = node[part]
    return node


def test_artifacts_exist(default_run):
    out, _ = default_run
    for name in ("dense.onnx", "model.onnx", "report.json", "report.md", "plan.json", "manifest.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"


def test_report_schema(default_run):
    out, report = default_run
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["target_speedup"] == 2.0
    for key in REQUIRED:
        _get(on_disk, key)  # KeyError names the missing key
    # A profile short of the target prunes again (prune.resolve_attempts): every stage runs once more.
    attempts = 1 + len(on_disk.get("resolves") or [])
    assert [s["name"] for s in on_disk["stages"]] == ["prune", "finetune", "shrink", "export", "profile"] * attempts
    assert on_disk["speedup"]["measured"] > 0 and on_disk["latency_ms"]["dense"] > 0
    assert on_disk["threads"] == 1 and on_disk["batch_size"] == 1 and on_disk["policy"] == "spdy"
    assert on_disk["input"]["dtype"] == "float32" and on_disk["input"]["token_ids_below"] is None
    host_load = on_disk["host_load"]  # measured from /proc/stat around the profile's timing
    assert set(host_load) == {"others_busy", "steal", "cpus", "seconds"} and 0 <= host_load["others_busy"] <= 1
    assert host_load["seconds"] > 0
    for layer in on_disk["layers"]:
        assert 1 <= layer["channels_after"] <= layer["channels_before"]
        assert layer["latency_ms_before"] >= 0 and layer["latency_ms_after"] >= 0


def test_outputs_agreement_is_what_the_shipped_models_compute(default_run):
    """report.outputs, recomputed here from dense.onnx and model.onnx on the test split of the digits."""
    from deploycompress.data import load_digits

    out, report = default_run
    x = load_digits(seed=0).x_test.numpy()
    dense, compressed = (runtime.make_session(str(out / name), threads=1) for name in ("dense.onnx", "model.onnx"))
    a, b = (s.run(None, {s.get_inputs()[0].name: x})[0] for s in (dense, compressed))
    outputs = report["outputs"]
    assert outputs["split"] == "test split" and outputs["samples"] == len(x)
    assert outputs["top1_agreement"] == pytest.approx((a.argmax(1) == b.argmax(1)).mean() * 100)
    assert outputs["relative_rms_error"] == pytest.approx(np.sqrt(np.mean((b - a) ** 2) / np.mean(a ** 2)), rel=1e-4)
    assert 0 < outputs["relative_rms_error"] and 90 < outputs["top1_agreement"] <= 100


def test_load_compressed_rebuilds_the_shipped_model(default_run, tmp_path):
    """The PyTorch model of a run, from plan.json and compressed.pt on a fresh zoo model; a run directory
    that is not one, or a model of another architecture, is one UserError line."""
    from deploycompress import load_compressed
    from deploycompress.errors import UserError
    from deploycompress.models.zoo import create_model

    out, report = default_run
    model = load_compressed(out, create_model("resnet_digits", num_classes=10))
    assert sum(p.numel() for p in model.parameters()) == report["params"]["compressed"]
    x = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    session = runtime.make_session(str(out / "model.onnx"), threads=1)
    shipped = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        assert np.allclose(model(torch.from_numpy(x)).numpy(), shipped, atol=1e-4)
    with pytest.raises(UserError, match="not the directory of a finished run"):
        load_compressed(tmp_path, create_model("resnet_digits", num_classes=10))
    with pytest.raises(UserError, match="does not fit this model"):
        load_compressed(out, create_model("vgg_digits", num_classes=10))


def test_compressed_model_is_smaller_and_parity_holds(default_run):
    out, report = default_run
    assert report["params"]["compressed"] < report["params"]["dense"]
    assert report["macs"]["compressed"] < report["macs"]["dense"]
    assert report["onnx"]["max_abs_diff"] <= report["onnx"]["tolerance"]
    assert (out / "model.onnx").stat().st_size < (out / "dense.onnx").stat().st_size
    # Re-check parity independently of the pipeline: the two ONNX models agree on the dense model's
    # shape of output, and the shipped model has a dynamic batch axis and constant weights.
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert len(proto.graph.input) == 1  # weights are initializers, not inputs
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = runtime.make_session(out / "model.onnx")
    x = np.random.default_rng(0).standard_normal((5, 1, 16, 16)).astype(np.float32)
    assert session.run(None, {"input": x})[0].shape == (5, 10)


def test_report_md_readable(default_run):
    out, _ = default_run
    text = (out / "report.md").read_text()
    assert "measured" in text and "| group |" in text and "Interleaved" in text


def test_accuracy_recorded(default_run):
    _, report = default_run
    assert 90.0 <= report["accuracy"]["dense"] <= 100.0
    assert report["accuracy"]["compressed"] is not None


def _run_cli(cli, *args, cwd=None):
    return subprocess.run([cli, "run", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("args,fragment", [
    (["--target-speedup", "1"], "greater than 1"),
    (["--target-speedup", "0.5x"], "greater than 1"),
    (["--target-speedup", "fast"], "not a number"),
    (["--threads", "abc"], "--threads"),
    (["--policy", "nope"], "unknown allocation policy"),
    (["--importance", "nope"], "unknown importance criterion"),
    (["--model", "no_such_model"], "unknown model"),
])
def test_bad_input_one_line_exit_2(cli, tmp_path, args, fragment):
    result = _run_cli(cli, *args, "--out", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_out_dir_that_is_a_file(cli, tmp_path):
    target = tmp_path / "afile"
    target.write_text("keep me")
    result = _run_cli(cli, "--out", str(target))
    assert result.returncode == 2 and "not a directory" in result.stderr
    assert target.read_text() == "keep me"  # nothing the user had is lost


def test_unwritable_out_dir(cli, tmp_path):
    import os

    if os.geteuid() == 0:  # permissions do not bind root: use a filesystem nobody may write to
        target = "/proc/deploycompress-test/run"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = str(locked / "run")
    result = _run_cli(cli, "--out", target)
    assert result.returncode == 2, result.stderr
    assert "not writable" in result.stderr and len(result.stderr.strip().splitlines()) == 1
