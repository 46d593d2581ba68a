"""The lazy Pillow import shared by the data layer."""

from __future__ import annotations

from types import ModuleType


def require_pil(what: str) -> ModuleType:
    """Return ``PIL.Image``, or raise an ImportError saying that ``what`` needs Pillow."""
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(
            f"{what} needs Pillow to read and write images; install it with `pip install pillow`"
        ) from err
    return Image
