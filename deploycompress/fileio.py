"""Atomic file writes: a temporary file in the same directory, then a rename, so an interrupted run
never leaves a half-written ONNX model or report that looks complete."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import UserError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, fsync, then rename onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, _default_file_mode())  # mkstemp makes 0600; artifacts get the usual mode
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise UserError(f"could not write {path}: {exc.strerror or exc}") from None
    except Exception:
        # Some writers hide the OSError: torch.save on a full disk raises RuntimeError ("unexpected pos").
        full = _no_space_left(path.parent)
        tmp_path.unlink(missing_ok=True)
        if full:
            raise UserError(f"could not write {path}: No space left on device") from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _no_space_left(directory: Path) -> bool:
    """True when the filesystem holding `directory` is full (checked before the partial file is removed)."""
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < (1 << 20)


def remove_stale_temporaries(directory: str | Path) -> None:
    """Delete the temporary files of writes a killed process never finished (SIGKILL skips cleanup)."""
    for stale in Path(directory).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove it is writable, before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe."):
            pass
    except OSError as exc:
        raise UserError(f"output directory {path} is not writable: {exc.strerror or exc}") from None
    return path
