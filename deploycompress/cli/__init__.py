"""The `deploycompress` command. One module per command group; commands are thin: check the flags,
call the library, turn known errors into one line on stderr and exit code 2 (`--debug` shows the
traceback instead)."""
from __future__ import annotations

import importlib
import os
import sys

import typer
from typer.exceptions import Abort, Exit, TyperException

from ..errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress a PyTorch model to a measured speedup target and ship a smaller ONNX model.")

# Each module registers its commands on `app` when imported.
COMMAND_MODULES = ["run", "zoo", "profile", "compare", "check", "tiles"]

_DEBUG = "--debug" in sys.argv


def main(argv: list[str] | None = None) -> None:
    # Before torch is imported: training uses both cores of the reference machine unless told otherwise.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}")
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="deploycompress", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into exit code 130, silently
            _interrupted(argv)
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        if _DEBUG:
            raise
        print(f"deploycompress: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exit as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except Abort:
        _interrupted(argv)
    except TyperException as exc:  # usage errors: bad option values, unknown options
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"deploycompress: error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted(argv)


def _interrupted(argv: list[str] | None) -> None:
    args = sys.argv[1:] if argv is None else argv
    hint = "; rerun with --resume to continue" if args[:1] == ["run"] else ""
    print(f"deploycompress: interrupted{hint}", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
    main()
