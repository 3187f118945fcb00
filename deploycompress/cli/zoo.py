"""`deploycompress zoo`: list the built-in models."""
from __future__ import annotations

from . import app


@app.command("zoo")
def zoo_list() -> None:
    """List the built-in models."""
    from ..models.zoo import model_registry

    for name in model_registry.names():
        entry = model_registry.get(name)
        print(f"{name:20s} input {','.join(map(str, entry.input_shape)):12s} data {entry.dataset:8s} {entry.description}")
