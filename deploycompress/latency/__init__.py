"""Latency measurement on the deployment runtime (ONNX Runtime)."""
