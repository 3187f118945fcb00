"""How busy the rest of the machine was while a speedup was timed (deploycompress.latency.host)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from deploycompress.latency import host
from deploycompress.latency.host import CpuSnapshot
from deploycompress.report import summary_lines


def test_other_processes_share_of_the_time_left_free():
    # 2 CPUs for 10 s: we used 10 s (one timing thread), the machine was busy 18 s: others used 8 of the 10 left
    start, end = CpuSnapshot(100.0, 5.0, 1.0, 50.0), CpuSnapshot(118.0, 6.0, 11.0, 60.0)
    assert host.load_between(start, end, cpus=2) == {"others_busy": 0.8, "steal": 0.05, "cpus": 2, "seconds": 10.0}
    quiet = host.load_between(start, CpuSnapshot(110.2, 5.0, 11.0, 60.0), cpus=2)
    assert quiet["others_busy"] == pytest.approx(0.02) and host.busy_text(quiet) is None
    assert host.load_between(None, end) is None and host.busy_text(None) is None
    # two timing threads on 2 CPUs used all 20 s: 0.2 s of others over the floor of a tenth (2 s) reads 10%, not 100%
    everything = host.load_between(start, CpuSnapshot(120.2, 5.0, 21.0, 60.0), cpus=2)
    assert everything["others_busy"] == pytest.approx(0.1) and host.busy_text(everything) is None
    text = host.busy_text({"others_busy": 0.8, "steal": 0.3, "cpus": 2, "seconds": 10.0}, " (hint)")
    assert text.startswith("other processes used 80% of the CPU time this measurement left free; the hypervisor "
                           "gave 30% of this machine's CPU time to other guests: ") and text.endswith(" (hint)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat")
def test_a_busy_process_beside_the_measurement_is_counted():
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 2\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)  # the child is up and spinning
        start = host.snapshot()
        time.sleep(1.0)
        load = host.load_between(start, host.snapshot())
    finally:
        child.wait()
    # one spinning process over the CPU time we left free (we slept): at least 1/cpus of it, less other noise
    assert load["others_busy"] >= 0.8 / load["cpus"], load


def test_the_run_summary_says_when_the_machine_was_busy():
    report = {"target_speedup": 2.0, "target_met": True, "device": "cpu", "threads": 1, "batch_size": 1,
              "speedup": {"measured": 2.2, "ci95": [2.1, 2.3], "predicted": 2.1, "macs_ratio": 2.5},
              "latency_ms": {"dense": 1.0, "compressed": 0.45}, "accuracy": {"dense": None, "compressed": None},
              "params": {"dense": 10, "compressed": 5}, "macs": {"dense": 10, "compressed": 4},
              "onnx": {"max_abs_diff": 1e-6, "opset": 17}, "policy": "spdy", "importance": "l2",
              "search": {"candidates": []}}
    assert not any(line.startswith("host") for line in summary_lines(report))
    report["host_load"] = {"others_busy": 0.97, "steal": 0.0, "cpus": 2, "seconds": 12.0}
    assert summary_lines(report)[-1] == (
        "host      other processes used 97% of the CPU time this measurement left free: work beside a measurement "
        "can slow the two models unequally, so this speedup may differ on a quiet machine (measure again there: "
        "deploycompress compare dense.onnx model.onnx)")
