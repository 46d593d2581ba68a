"""FID's InceptionV3: the network, its input pipeline and its weights, from a file the user names (no download).

The FID network is not torchvision's InceptionV3: it is TensorFlow's 2015-12-05 graph, as pytorch-fid and
torch-fidelity rebuild it. Differences from torchvision: 1008 classes; average pools that leave padding out of the
mean (``count_include_pad=False``) in the A, C and first E blocks; a max pool in the last E block's pool branch;
inputs resized to 299x299 with TensorFlow 1's bilinear resize (source coordinate ``dst * in / out``, no half-pixel
offset), then scaled as ``(x - 128) / 128`` from 0..255 values. Module and parameter names follow the published
state_dicts (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ``fc.weight``, ...), so both
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` and torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` load into it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ENV_WEIGHTS = "FASTGAN_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
# The published files, with the checksum prefix their names carry (torch.hub's convention: the first 8 hex digits
# of the file's SHA-256).
WEIGHT_FILES = {
    "pt_inception-2015-12-05-6726825d.pth": "https://github.com/mseitzer/pytorch-fid/releases/download/"
                                            "fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "weights-inception-2015-12-05-6726825d.pth": "https://github.com/toshas/torch-fidelity/releases/download/"
                                                 "v0.2.0/weights-inception-2015-12-05-6726825d.pth",
}
SHA256_PREFIX = "6726825d"


class InceptionWeightsError(FileNotFoundError):
    """The FID Inception weights file is missing or is not one of the published files."""


class _ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU: names ``conv`` and ``bn`` as the published weights."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class _BlockB(nn.Module):
    """35x35 -> 17x17 reduction."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class _BlockD(nn.Module):
    """17x17 -> 8x8 reduction."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):
    """8x8 block with split 3x3 branches; the FID graph pools with a mean in Mixed_7b and a max in Mixed_7c."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``[N, C, H, W]`` to ``size x size`` as TensorFlow 1's ``resize_bilinear``
    (``align_corners=False``): output pixel ``i`` reads source coordinate ``i * H / size`` (no half-pixel centres),
    its right/lower neighbour clamped at the border. This, not ``F.interpolate``, is what the FID graph was fed."""
    n, c, h, w = x.shape

    def axis(length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # torch-fidelity computes coordinates in float32 even for a float64 network; so do we, for equal inputs.
        src = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(length / size,
                                                                                      dtype=torch.float32)
        lo = src.long()
        hi = (lo + 1).clamp_max(length - 1)
        return lo, hi, (src - lo.float()).to(x.dtype)

    ylo, yhi, dy = axis(h)
    xlo, xhi, dx = axis(w)
    top, bottom = x[:, :, ylo, :], x[:, :, yhi, :]
    tl, tr, bl, br = top[..., xlo], top[..., xhi], bottom[..., xlo], bottom[..., xhi]
    upper = tl + (tr - tl) * dx
    lower = bl + (br - bl) * dx
    return upper + (lower - upper) * dy[:, None]


def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """Images ``[N, C, H, W]`` in [-1, 1] (fastgan's convention; C = 1 or 3) -> the network's input, 3x299x299.

    The images are first quantised to 0..255 as an 8-bit image file would hold them (torch-fidelity takes uint8
    images), grey ones repeated over 3 channels; then TF1-bilinear-resized and scaled to ``(x - 128) / 128``.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"inception features: images must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    x = ((images.float() + 1) * 127.5).round().clamp(0, 255)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (resize_bilinear_tf1(x, INPUT_SIZE) - 128) / 128


class FIDInceptionV3(nn.Module):
    """The FID InceptionV3. ``forward(x)`` takes the preprocessed input ``[N, 3, 299, 299]`` (``to_inception_input``)
    and returns ``(pool3 [N, 2048], logits_unbiased [N, 1008])``: the pooled features of FID/KID/PR and the class
    logits without the fc bias that torch-fidelity's Inception Score uses. ``features(images)`` does both steps."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        pool3 = x.mean((2, 3))
        return pool3, pool3 @ self.fc.weight.T

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool3, logits_unbiased) of images in [-1, 1], in float32."""
        param = self.fc.weight
        pool3, logits = self(to_inception_input(images.to(param.device)).to(param.dtype))
        return pool3.float(), logits.float()


def weights_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The weights file to use: ``path``, else ``$FASTGAN_INCEPTION_WEIGHTS``; an error saying how to get one."""
    given = path if path is not None else os.environ.get(ENV_WEIGHTS) or None
    if given is None:
        raise InceptionWeightsError(_missing_message(None))
    file = Path(given).expanduser()
    if not file.is_file():
        raise InceptionWeightsError(_missing_message(file))
    return file


def _missing_message(file: Path | None) -> str:
    names = " or ".join(WEIGHT_FILES)
    where = (f"the Inception weights file {file} does not exist" if file is not None
             else f"no Inception weights file given (--inception-weights PATH or ${ENV_WEIGHTS})")
    return (f"{where}: FID/KID/IS with Inception features need the FID InceptionV3 weights, {names} (SHA-256 "
            f"beginning {SHA256_PREFIX}; published at {' and '.join(WEIGHT_FILES.values())}); fastgan never downloads: "
            f"fetch one, put it anywhere (e.g. ~/.cache/fastgan/{next(iter(WEIGHT_FILES))}) and pass its path with "
            f"--inception-weights or ${ENV_WEIGHTS}; or use --features lenet for 28x28 digits")


def sha256_prefix(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[: len(SHA256_PREFIX)]


def load_inception(path: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, check_hash: bool = True) -> FIDInceptionV3:
    """The FID InceptionV3 with weights from ``path`` (or ``$FASTGAN_INCEPTION_WEIGHTS``), in eval mode, frozen.

    ``check_hash`` compares the file's SHA-256 with the published prefix; a mismatch raises, saying so (a file that
    is not the FID network would give numbers not comparable with anyone's).
    """
    file = weights_path(path)
    if check_hash and (found := sha256_prefix(file)) != SHA256_PREFIX:
        raise InceptionWeightsError(f"{file}: SHA-256 begins {found}, not {SHA256_PREFIX}: not the published FID "
                                    f"Inception weights ({' or '.join(WEIGHT_FILES)})")
    state = torch.load(file, map_location="cpu", weights_only=True)
    net = FIDInceptionV3()
    load_state(net, state, str(file))
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_state(net: FIDInceptionV3, state: dict, source: str) -> None:
    """Load a published state_dict; a file without BatchNorm's ``num_batches_tracked`` counters loads too."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{source}: not an FID Inception state_dict ({len(missing)} keys missing, e.g. "
                         f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    full = {k: state.get(k, v) for k, v in expected.items()}
    net.load_state_dict(full)
