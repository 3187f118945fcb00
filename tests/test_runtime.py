"""Timing discipline: interleaved comparison, confidence interval, summaries."""
import numpy as np
import pytest
import torch

from deploycompress.errors import UserError
from deploycompress.latency import runtime
from deploycompress.onnx_export import export_bytes


def _session(width: int):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(width, width, 3, padding=1))
    return runtime.make_session(export_bytes(model, torch.zeros(1, 1, 16, 16)), threads=1)


def test_summarize():
    stats = runtime.summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert stats.median_ms == 3.0 and stats.min_ms == 1.0 and stats.rounds == 5
    assert stats.spread > 0


def test_bootstrap_ci_brackets_median():
    values = list(np.random.default_rng(0).normal(2.0, 0.1, 50))
    low, high = runtime.bootstrap_median_ci(values)
    assert low <= float(np.median(values)) <= high and high - low < 0.2


def test_compare_ranks_a_bigger_model_slower():
    big, small = _session(64), _session(8)
    feed = runtime.random_feed(big, 1)
    result = runtime.compare(big, small, feed, rounds=7, warmup=3)
    assert result.speedup > 1.0  # 64 channels vs 8: no noise hides a 50x MAC difference
    assert result.ci_low <= result.speedup <= result.ci_high
    assert set(result.to_dict()) >= {"speedup", "ci95", "a", "b", "rounds"}


def test_sessions_with_a_thread_pool_stop_its_spinning_after_each_run():
    """From two threads the pool's workers stop spinning when a Run returns (an idle session's spinning
    workers otherwise take the cores the other session of an interleaved pair is timed on), and the
    latency caches key those figures apart; one thread has no pool, and its cache key is unchanged."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1))
    blob = export_bytes(model, torch.zeros(1, 1, 16, 16))

    def stop_entry(session):
        try:
            return session.get_session_options().get_session_config_entry("session.force_spinning_stop")
        except RuntimeError:  # "does not have configuration with key": not set
            return None

    assert stop_entry(runtime.make_session(blob, threads=2)) == "1"
    assert stop_entry(runtime.make_session(blob, threads=2, stop_spinning=False)) != "1"
    assert stop_entry(runtime.make_session(blob, threads=1)) != "1"
    assert "spinning" in runtime.runtime_fingerprint(2, 1)
    assert "spinning" not in runtime.runtime_fingerprint(2, 1, stop_spinning=False)
    assert set(runtime.runtime_fingerprint(1, 1)) == {"ort", "cpu", "isa", "threads", "batch_size", "device"}


def test_random_feed_uses_batch():
    session = _session(8)
    feed = runtime.random_feed(session, 4)
    assert next(iter(feed.values())).shape == (4, 1, 16, 16)


def test_channel_block_is_the_padding_ort_applies_to_a_conv_off_the_block():
    """The block read off ORT (a one-conv probe) is what its NCHWc rewrite pads a real model's conv to:
    24 output channels run as 32 where the block is 16 (AVX-512), as 24 where it is 8."""
    import json
    import tempfile

    block = runtime.channel_block()
    assert block % runtime.DEFAULT_CHANNEL_MULTIPLE == 0
    assert runtime.channel_block("cuda") == runtime.DEFAULT_CHANNEL_MULTIPLE
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.ReLU()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        session = runtime.make_session(export_bytes(model, torch.zeros(1, 3, 16, 16)), threads=1, profile_dir=tmp)
        session.run(None, runtime.random_feed(session, 1))
        events = json.load(open(session.end_profiling()))
    [conv] = [e for e in events if e.get("cat") == "Node" and e.get("args", {}).get("op_name") == "Conv"]
    reported = next(iter(conv["args"]["input_type_shape"][1].values()))[0]
    assert reported == -(-24 // block) * block


class _Untraceable(torch.nn.Module):
    """Raises under both exporters' tracing, as a model with unexportable Python would."""

    def forward(self, x):
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            raise RuntimeError("this forward cannot be traced")
        return x + 1


def test_export_failure_names_the_models_own_error():
    """When the TorchScript exporter fails and the dynamo fallback fails too, the one line names the
    model's error first, not only the fallback's."""
    with pytest.raises(UserError) as caught:
        export_bytes(_Untraceable(), torch.zeros(1, 3))
    message = str(caught.value)
    assert message.startswith("ONNX export failed: this forward cannot be traced") and "\n" not in message
    assert "(the dynamo exporter: " in message


class _ReflectThenPool(torch.nn.Module):
    """A reflect-padded conv before an adaptive pool to 4x2: the TorchScript exporter loses the spatial
    sizes after the padding and cannot export the pool ("input size not accessible")."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.fc = torch.nn.Linear(8 * 4 * 2, 10)

    def forward(self, x):
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(self.conv(x), (4, 2)).flatten(1))


def test_a_model_the_torchscript_exporter_cannot_export_goes_through_the_dynamo_exporter(capfd):
    """It was 'ONNX export failed: ... (the dynamo exporter: No module named 'onnxscript')', and the
    failed TorchScript export dumped its whole IR graph on stderr from C++."""
    model = _ReflectThenPool().eval()
    blob = export_bytes(model, torch.zeros(1, 3, 32, 32))
    printed = capfd.readouterr()
    assert "Torch IR graph" not in printed.err + printed.out
    session = runtime.make_session(blob, threads=1)
    x = torch.randn(3, 3, 32, 32)  # the batch axis stays dynamic
    (shipped,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert np.allclose(shipped, model(x).numpy(), atol=1e-5)
