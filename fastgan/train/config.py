"""``TrainConfig``: every setting of a training run, the per-family defaults, and the checks made before any work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..data import DATASETS
from ..models import MODELS, check_image_size

AMP_MODES = ("off", "bf16", "fp16")
IMPLS = ("auto", "ref", "triton", "native")
_UNPAIRED = "unpaired"


@dataclass(frozen=True)
class FamilyDefaults:
    """What distinguishes the families in the loop: losses, optimiser, critic steps, clipping, penalty, decay."""

    loss: str  # fastgan.losses kind
    optimizer: str  # "adam" or "rmsprop"
    lr: float
    betas: tuple[float, float]
    n_critic: int
    clip: float | None  # WGAN weight clipping
    gp_weight: float  # WGAN-GP lambda (0: no penalty)
    decay_start: float  # fraction of the run after which the learning rate decays linearly to 0 (1.0: never)


FAMILIES: dict[str, FamilyDefaults] = {
    # Goodfellow et al.: the non-saturating generator loss the paper recommends in practice.
    "gan": FamilyDefaults("nonsaturating", "adam", 2e-4, (0.5, 0.999), 1, None, 0.0, 1.0),
    "dcgan": FamilyDefaults("nonsaturating", "adam", 2e-4, (0.5, 0.999), 1, None, 0.0, 1.0),
    "wgan": FamilyDefaults("wasserstein", "rmsprop", 5e-5, (0.0, 0.0), 5, 0.01, 0.0, 1.0),
    "wgan-gp": FamilyDefaults("wasserstein", "adam", 1e-4, (0.0, 0.9), 5, None, 10.0, 1.0),
    # Zhu et al.: constant for the first half, then linear decay to zero.
    "cyclegan": FamilyDefaults("least_squares", "adam", 2e-4, (0.5, 0.999), 1, None, 0.0, 0.5),
}

_DEFAULT_SIZE = {"digits": 32, "mnist": 28, "fashion-mnist": 28, "cifar10": 32, "folder": 64, _UNPAIRED: 256}


@dataclass
class TrainConfig:
    """Settings of one run. ``None`` fields take the family's or the dataset's default in ``resolved()``."""

    model: str = "dcgan"
    data: str = "digits"
    data_root: str | None = None
    download: bool = False
    image_size: int | None = None  # default: 28 for gan and MNIST-like data, 32 digits/cifar10, 64 folder, 256 unpaired
    channels: int | None = None  # default: the dataset's own
    batch_size: int = 64
    steps: int = 1000  # generator steps
    out: str | None = None  # default: runs/<model>-<data>
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available, else cpu
    impl: str = "auto"
    amp: str = "off"
    channels_last: bool = False
    z_dim: int = 100
    ngf: int = 64
    ndf: int = 64
    n_blocks: int | None = None  # cyclegan residual blocks; default 6 below 256 pixels, else 9
    lr_g: float | None = None
    lr_d: float | None = None
    betas: tuple[float, float] | None = None
    n_critic: int | None = None
    clip: float | None = None
    gp_weight: float | None = None
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    decay_start: float | None = None
    ema_decay: float = 0.999  # 0 disables the generator EMA
    num_samples: int = 64
    sample_every: int = 500
    checkpoint_every: int = 500
    keep_every: int = 0  # also keep step_XXXXXXX.pt every this many steps (0: only last.pt)
    log_every: int = 50
    extra: dict = field(default_factory=dict)  # free-form, saved with the run

    def resolved(self) -> TrainConfig:
        """A copy with every default filled in, after ``validate()``."""
        self.validate()
        family = FAMILIES[self.model]
        image_size = self.image_size or (28 if self.model == "gan" else _DEFAULT_SIZE[self.data])
        if self.model == "cyclegan" and self.channels is None:
            channels = 3
        else:
            from ..data import default_channels

            channels = self.channels or default_channels(self.data)
        config = dataclasses.replace(
            self,
            image_size=image_size,
            channels=channels,
            out=self.out or f"runs/{self.model}-{self.data}",
            lr_g=family.lr if self.lr_g is None else self.lr_g,
            lr_d=family.lr if self.lr_d is None else self.lr_d,
            betas=tuple(family.betas if self.betas is None else self.betas),
            n_critic=family.n_critic if self.n_critic is None else self.n_critic,
            clip=family.clip if self.clip is None else self.clip,
            gp_weight=family.gp_weight if self.gp_weight is None else self.gp_weight,
            decay_start=family.decay_start if self.decay_start is None else self.decay_start,
        )
        config.validate()
        return config

    def validate(self) -> None:
        """ValueError naming the setting and the fix for anything that cannot run; nothing is loaded or built."""
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.data not in DATASETS:
            raise ValueError(f"unknown dataset {self.data!r}; expected one of {', '.join(DATASETS)}")
        if (self.model == "cyclegan") != (self.data == _UNPAIRED):
            if self.model == "cyclegan":
                raise ValueError(
                    f"cyclegan translates between two image domains: it needs --data unpaired (a folder with "
                    f"trainA/ and trainB/), not {self.data!r}"
                )
            raise ValueError(
                f"--data unpaired holds two image domains for cyclegan; model {self.model!r} needs one "
                "(digits, mnist, fashion-mnist, cifar10, folder)"
            )
        if self.data in ("folder", _UNPAIRED) and not self.data_root:
            raise ValueError(f"--data {self.data} needs --data-root (the folder of images)")
        if self.image_size is not None:
            check_image_size(self.model, _positive("image_size", self.image_size))
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        for name in ("batch_size", "steps", "z_dim", "ngf", "ndf", "num_samples", "sample_every",
                     "checkpoint_every", "log_every"):
            _positive(name, getattr(self, name))
        if self.keep_every < 0:
            raise ValueError(f"keep_every must be >= 0, got {self.keep_every}")
        if self.n_critic is not None:
            _positive("n_critic", self.n_critic)
        if self.n_blocks is not None:
            _positive("n_blocks", self.n_blocks)
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {self.impl!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.decay_start is not None and not 0.0 <= self.decay_start <= 1.0:
            raise ValueError(f"decay_start must be a fraction in [0, 1], got {self.decay_start}")
        if self.pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {self.pool_size}")
        resolve_device(self.device)

    def to_dict(self) -> dict:
        """Plain values (tuples as lists), for checkpoints and logs."""
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas) if self.betas is not None else None
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys (from a newer version) raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"checkpoint config has settings this version does not know: {', '.join(unknown)}")
        values = dict(values)
        if values.get("betas") is not None:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; anything else checked to exist. ValueError says why not."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: {err}") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here (use --device cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif resolved.type != "cpu":
        raise ValueError(f"device {device!r}: only cpu and cuda devices are supported")
    return resolved
