"""Timing discipline: interleaved comparison, confidence interval, summaries."""
import numpy as np
import torch

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


def test_random_feed_uses_batch():
    session = _session(8)
    feed = runtime.random_feed(session, 4)
    assert next(iter(feed.values())).shape == (4, 1, 16, 16)
