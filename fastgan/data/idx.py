"""Reader for the IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

# IDX header: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per dimension.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw (told apart by content, not by name), into a numpy array.

    Returns an array of the file's shape and type (native byte order, writable). Raises ValueError naming the
    file when the header is malformed, the type code is unknown, or the data size disagrees with the header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"IDX file {path} is a corrupt or truncated gzip file: {err}") from err
    if len(raw) < 4:
        raise ValueError(f"{path} is too short ({len(raw)} bytes) to be an IDX file")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file: it must start with two zero bytes, got {raw[:4]!r}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"IDX file {path} has unknown type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise ValueError(f"IDX file {path} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header ({len(raw)} bytes, header needs {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"IDX file {path} holds {len(raw) - header} data bytes but its header {shape} of {dtype} "
            f"implies {expected}; the file is truncated or not an IDX file"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)
