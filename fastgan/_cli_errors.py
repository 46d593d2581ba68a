"""How every ``fastgan`` command answers bad input: one line naming the flag and the fix, exit status 2."""

from __future__ import annotations

import sys


def one_line(error: BaseException) -> str:
    """An error as one line. A DataLoader worker's error carries the worker's traceback: keep its last line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    return lines[-1] if "Original Traceback" in str(error) else "; ".join(lines)


def command_error(command: str, message: str) -> int:
    """Print ``fastgan COMMAND: error: MESSAGE`` to stderr; return the exit status 2."""
    print(f"fastgan {command}: error: {message}", file=sys.stderr)
    return 2


def user_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises: answered in one line, never a traceback."""
    from ._backend import ImplUnavailableError
    from .data import DownloadError

    return ValueError, OSError, ImplUnavailableError, DownloadError, ImportError
