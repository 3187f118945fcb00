"""`deploycompress profile MODEL.onnx`: latency and where it goes, on ONNX Runtime.

Also the options `profile` and `compare` share (device, thread and batch lists), defined once here."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from . import app


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


DEVICE_HELP = "cpu, or cuda (ORT's CUDA execution provider; needs onnxruntime-gpu and a GPU)."
ROUNDS_HELP = "Timed rounds (each about 20 ms of back-to-back runs)."
WARMUP_HELP = "Untimed runs right before timing (a cold or idle session is slow)."


def parse_int_list(text: str, option: str) -> list[int]:
    """'1,2' -> [1, 2]; every value a positive integer, order kept, duplicates dropped."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise UserError(f"{option} {text!r} must be positive integers separated by commas, e.g. 1,2")
        if int(part) not in values:
            values.append(int(part))
    return values


def existing_model(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"model not found: {path}")
    return path


def default_json_path(model: Path) -> Path:
    """Next to the model: runs/x/model.onnx -> runs/x/model.profile.json."""
    return model.with_name(model.stem + ".profile.json")


@app.command("profile")
def profile(
    model: Path = typer.Argument(..., help="An ONNX model file."),
    threads: str = typer.Option("1", "--threads", help="Intra-op thread counts to sweep, e.g. 1,2."),
    batch_size: str = typer.Option("1", "--batch-size", help="Batch sizes to sweep, e.g. 1,8 (needs a dynamic batch axis)."),
    rounds: int = typer.Option(30, min=3, help=ROUNDS_HELP),
    warmup: int = typer.Option(10, min=0, help=WARMUP_HELP),
    profile_runs: int = typer.Option(20, min=1, help="Runs under ORT's profiler for the operator/layer breakdown."),
    device: Device = typer.Option(Device.cpu, help=DEVICE_HELP),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Where to write the JSON (default MODEL.profile.json next to the model)."),
    md: Optional[Path] = typer.Option(None, "--md", help="Also write the profile as Markdown to this file."),
    top: int = typer.Option(10, min=1, help="Rows shown per breakdown table."),
    seed: int = typer.Option(0, help="Seed of the random input."),
) -> None:
    """Latency with warm-up and repeated rounds, per-operator and per-layer breakdown, thread/batch sweeps."""
    from ..fileio import write_json, write_text
    from ..latency import profiler

    thread_list = parse_int_list(threads, "--threads")
    batch_list = parse_int_list(batch_size, "--batch-size")
    result = profiler.profile_model(existing_model(model), thread_list, batch_list, device.value,
                                    rounds=rounds, warmup=warmup, profile_runs=profile_runs, seed=seed)
    for line in profiler.table_lines(result, top):
        print(line)
    json_out = json_path or default_json_path(model)
    write_json(json_out, result)
    written = [str(json_out)]
    if md is not None:
        write_text(md, profiler.markdown(result))
        written.append(str(md))
    print(f"\nwrote {', '.join(written)}")
