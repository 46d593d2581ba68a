"""Atomic checkpoint files: a run killed at any moment keeps its previous checkpoint intact.

``save_checkpoint`` writes to a temporary file in the target's folder, flushes and fsyncs it, then ``os.replace``s
it over the target (atomic on POSIX and Windows) and fsyncs the folder so the rename itself survives a crash.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_writer

LAST = "last.pt"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` with ``torch.save`` to ``path`` atomically; return the path. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, fsync=True) as handle:
        torch.save(state, handle)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; FileNotFoundError / ValueError say what is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected a .pt file written by `fastgan train`)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        # PyTorch's own message advises weights_only=False (unsafe for a file of unknown origin) and filing an issue:
        # neither helps here, so it is left to the exception chain.
        raise ValueError(
            f"{path} is not a fastgan checkpoint: torch.load cannot read it (truncated, or not written by "
            f"`fastgan train`; {type(err).__name__})"
        ) from err
    if not isinstance(state, dict) or "config" not in state or "nets" not in state:
        raise ValueError(f"{path} is not a fastgan checkpoint: a PyTorch file without 'config' and 'nets' entries")
    return state
