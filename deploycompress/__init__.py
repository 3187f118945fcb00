"""deploycompress: compress a PyTorch model to a *measured* speedup target and ship a smaller ONNX model.

The public front door is small on purpose; everything else lives in its own module.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "run_pipeline", "build_config", "load_compressed"]


def __getattr__(name: str):
    # Lazy, so `import deploycompress` (and `deploycompress --help`) does not import torch.
    if name == "run_pipeline":
        from .pipeline import run_pipeline

        return run_pipeline
    if name == "build_config":
        from .recipe import build_config

        return build_config
    if name == "load_compressed":
        from .compressed import load_compressed

        return load_compressed
    raise AttributeError(name)
