"""Fetch dataset files into a cache folder: verified by MD5, written atomically."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .._io import atomic_writer

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


class DownloadError(RuntimeError):
    """A dataset file could not be fetched from any mirror."""


def default_cache_dir(name: str) -> Path:
    """Where ``download=True`` puts dataset ``name`` when no root is given: ``~/.cache/fastgan/<name>``."""
    return Path.home() / ".cache" / "fastgan" / name


def download_file(mirrors: Sequence[str], filename: str, directory: Path, md5: str | None) -> Path:
    """Fetch ``filename`` from the first mirror that serves it into ``directory``; return the path.

    Each mirror is a URL prefix (``https://host/path/``). The bytes go to a temporary file beside the target,
    are checked against ``md5`` when given, and are moved into place with ``os.replace`` only when complete,
    so an interrupted download never leaves a file that looks finished. Raises DownloadError listing every
    URL tried and why it failed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        try:
            with atomic_writer(target, fsync=True) as handle:
                digest = hashlib.md5(usedforsecurity=False)
                with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        handle.write(chunk)
                if md5 is not None and digest.hexdigest() != md5:
                    raise ValueError(f"MD5 {digest.hexdigest()} does not match the expected {md5}")
        except (OSError, ValueError, urllib.error.URLError) as err:
            failures.append(f"{url}: {err}")
            continue
        return target
    raise DownloadError(f"could not download {filename}; tried " + "; ".join(failures))
