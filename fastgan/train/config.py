"""``TrainConfig``: every setting of a training run, the per-family defaults, and the checks made before any work.

Each field carries its own help text (``field.metadata["help"]``): ``fastgan train`` makes one flag per field from
it (``lr_g`` -> ``--lr-g``), and a TOML file read by ``read_config_file`` uses the field names as keys, so the command
line, config files and the Python API name every setting the same way. A run folder keeps its resolved config as
``config.toml`` (``config_toml``), which ``fastgan train --config`` reads back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import DATASETS
from ..models import CONDITIONAL, MODELS, check_conditional, check_image_size

AMP_MODES = ("off", "bf16", "fp16")
IMPLS = ("auto", "ref", "triton", "native")
SPLITS = ("train", "test")
TWO_DOMAIN_DATA = ("unpaired", "digit-styles")  # datasets yielding (a, b) pairs: what cyclegan trains on


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
    batch_size: int


FAMILIES: dict[str, FamilyDefaults] = {
    # Goodfellow et al.: the non-saturating generator loss the paper recommends in practice.
    "gan": FamilyDefaults("nonsaturating", "adam", 2e-4, (0.5, 0.999), 1, None, 0.0, 1.0, 64),
    "dcgan": FamilyDefaults("nonsaturating", "adam", 2e-4, (0.5, 0.999), 1, None, 0.0, 1.0, 64),
    "wgan": FamilyDefaults("wasserstein", "rmsprop", 5e-5, (0.0, 0.0), 5, 0.01, 0.0, 1.0, 64),
    "wgan-gp": FamilyDefaults("wasserstein", "adam", 1e-4, (0.0, 0.9), 5, None, 10.0, 1.0, 64),
    # Zhu et al.: batch 1, constant for the first half, then linear decay to zero.
    "cyclegan": FamilyDefaults("least_squares", "adam", 2e-4, (0.5, 0.999), 1, None, 0.0, 0.5, 1),
}

_DEFAULT_SIZE = {"digits": 32, "mnist": 28, "fashion-mnist": 28, "cifar10": 32, "folder": 64, "unpaired": 256,
                 "digit-styles": 32}

# Settings a resumed run may change: they decide where, how fast and how visibly it runs, not what is trained.
RESUMABLE = frozenset({"steps", "out", "device", "impl", "workers", "cuda_graphs", "log_every", "sample_every",
                       "checkpoint_every", "keep_every", "data_root", "download", "eval_every", "eval_num"})


def _setting(default, help: str, *, group: str, family: str | None = None, choices: tuple | None = None,
             metavar: str | None = None, default_factory=dataclasses.MISSING, const: str | None = None):
    """A TrainConfig field with its command-line help; ``family``: the FamilyDefaults attribute a None default takes;
    ``const``: the value of the flag given without one."""
    metadata = {"help": help, "group": group, "family": family, "choices": choices, "metavar": metavar,
                "const": const}
    return field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass
class TrainConfig:
    """Settings of one run. ``None`` fields take the family's or the dataset's default in ``resolved()``."""

    model: str = _setting("dcgan", "GAN family (default: dcgan)", group="run", choices=MODELS)
    data: str | None = _setting(
        None, "dataset (default: digits, scikit-learn's bundled handwritten digits, no download; for cyclegan "
        "digit-styles, two styles of the same digits)", group="run", choices=DATASETS)
    data_root: str | None = _setting(
        None, "dataset folder, stored as an absolute path (default: ~/.cache/fastgan/<name> for mnist, fashion-mnist "
        "and cifar10; folder and unpaired need it)", group="run", metavar="PATH")
    download: bool = _setting(False, "download mnist / fashion-mnist / cifar10 into --data-root if missing "
                              "(default: off)", group="run")
    split: str = _setting("train", "the dataset split to train on (default: train)", group="run", choices=SPLITS)
    image_size: int | None = _setting(
        None, "image side (default: 28 for gan, mnist and fashion-mnist; 32 digits, digit-styles, cifar10; 64 folder; "
        "256 unpaired); dcgan/wgan/wgan-gp take 28 or a power of two 16..128", group="run")
    channels: int | None = _setting(None, "image channels (default: the dataset's own; 3 for cyclegan)", group="run",
                                    choices=(1, 3))
    workers: int | None = _setting(
        None, "DataLoader worker processes decoding the image files of --data folder / unpaired; 0 decodes in the "
        "training process (default: min(4, CPUs - 1))", group="run")
    batch_size: int | None = _setting(None, "images per batch; under torchrun the global batch, split evenly over the "
                                      "processes", group="run", family="batch_size")
    steps: int = _setting(1000, "generator steps in total (default: 1000)", group="run")
    out: str | None = _setting(None, "run folder (default: runs/<model>-<data>)", group="run", metavar="DIR")
    seed: int = _setting(0, "seed of every random choice: weights, noise, data order (default: 0)", group="run")
    device: str = _setting("auto", "auto (cuda if available), cpu, cuda, cuda:1, ... (default: auto)", group="run",
                           metavar="DEV")
    impl: str = _setting("auto", "implementation of fastgan's ops (default: auto)", group="run", choices=IMPLS)
    amp: str = _setting("off", "mixed precision (default: off)", group="run", choices=AMP_MODES)
    channels_last: bool = _setting(False, "NHWC memory format (default: off)", group="run")
    cuda_graphs: bool = _setting(
        False, "capture each kind of training step (penalties included) once as a CUDA graph and replay it; "
        "CUDA only, --amp off or bf16 (default: off)", group="run")
    sync_bn: bool = _setting(
        False, "under torchrun: batch-norm statistics of the global batch, all-reduced over the processes (two "
        "all-reduces per norm layer and pass; no effect on one process) instead of each process's slice "
        "(default: off)", group="run")
    z_dim: int = _setting(100, "generator input noise size (default: 100)", group="model")
    ngf: int = _setting(64, "generator width (default: 64)", group="model")
    ndf: int = _setting(64, "discriminator width (default: 64)", group="model")
    conditional: str | None = _setting(
        None, "class-conditional dcgan / wgan / wgan-gp on a labelled dataset: a generator with conditional batch norm "
        "G(z, labels) and a projection discriminator (projection, the flag's value when given alone) or one with an "
        "auxiliary classifier (acgan; fastgan classify uses it) (default: off)", group="model", choices=CONDITIONAL,
        const="projection")
    n_blocks: int | None = _setting(None, "cyclegan residual blocks (default: 9 from 256 pixels, else 6)",
                                    group="model")
    lr_g: float | None = _setting(None, "generator learning rate", group="optimisation", family="lr")
    lr_d: float | None = _setting(None, "discriminator learning rate", group="optimisation", family="lr")
    betas: tuple[float, float] | None = _setting(None, "Adam betas", group="optimisation", family="betas")
    n_critic: int | None = _setting(None, "discriminator steps per generator step", group="optimisation",
                                    family="n_critic")
    clip: float | None = _setting(None, "WGAN weight clipping bound", group="optimisation", family="clip")
    gp_weight: float | None = _setting(None, "WGAN-GP gradient penalty weight (0: none)", group="optimisation",
                                       family="gp_weight")
    r1_gamma: float = _setting(
        0.0, "R1 penalty weight on real images (Mescheder et al.; 0: none; StyleGAN2 uses 1-10); noise-to-image "
        "families (default: 0)", group="optimisation")
    r1_every: int = _setting(1, "lazy regularisation: R1 every N critic steps, weighted by N (StyleGAN2: 16; "
                             "default: 1)", group="optimisation")
    decay_start: float | None = _setting(
        None, "fraction of the run after which the learning rates decay linearly to 0 (1: never)",
        group="optimisation", family="decay_start")
    lambda_cycle: float = _setting(10.0, "cyclegan cycle-consistency weight (default: 10)", group="optimisation")
    lambda_identity: float = _setting(0.5, "cyclegan identity weight, relative to --lambda-cycle (default: 0.5)",
                                      group="optimisation")
    pool_size: int = _setting(50, "cyclegan history of generated images the discriminators see (default: 50)",
                              group="optimisation")
    ema_decay: float = _setting(0.999, "generator EMA decay; 0 disables the EMA (default: 0.999)", group="optimisation")
    num_samples: int = _setting(64, "images in each sample grid (default: 64)", group="output")
    log_every: int = _setting(50, "steps between metrics rows and progress reports (default: 50)", group="output")
    sample_every: int = _setting(500, "steps between sample grids (default: 500)", group="output")
    checkpoint_every: int = _setting(500, "steps between checkpoints, last.pt (default: 500)", group="output")
    keep_every: int = _setting(0, "also keep step_N.pt every N steps; 0: only last.pt (default: 0)", group="output")
    eval_every: int = _setting(0, "steps between quality scores of the sampled (EMA) generator in metrics.csv: "
                               "LeNet-FID, precision, recall against held-out real images, as fastgan eval; 28x28 "
                               "grey data; 0: never (default: 0)", group="output")
    eval_num: int = _setting(1000, "generated images per --eval-every score (default: 1000)", group="output")
    extra: dict = _setting(dataclasses.MISSING, "free-form KEY=VALUE saved with the run; repeatable (default: none)",
                           group="output", default_factory=dict)

    def resolved(self) -> TrainConfig:
        """A copy with every default filled in, after ``validate()``."""
        self.validate()
        family = FAMILIES[self.model]
        data = self.data or ("digit-styles" if self.model == "cyclegan" else "digits")
        image_size = self.image_size or (28 if self.model == "gan" else _DEFAULT_SIZE[data])
        if self.model == "cyclegan" and self.channels is None:
            channels = 3
        else:
            from ..data import default_channels

            channels = self.channels or default_channels(data)
        config = dataclasses.replace(
            self,
            data=data,
            data_root=str(Path(self.data_root).expanduser().resolve()) if self.data_root else None,
            image_size=image_size,
            channels=channels,
            workers=min(4, max(0, (os.cpu_count() or 1) - 1)) if self.workers is None else self.workers,
            batch_size=family.batch_size if self.batch_size is None else self.batch_size,
            out=self.out or f"runs/{self.model}-{data}",
            lr_g=family.lr if self.lr_g is None else self.lr_g,
            lr_d=family.lr if self.lr_d is None else self.lr_d,
            betas=tuple(family.betas if self.betas is None else self.betas),
            n_critic=family.n_critic if self.n_critic is None else self.n_critic,
            clip=family.clip if self.clip is None else self.clip,
            gp_weight=family.gp_weight if self.gp_weight is None else self.gp_weight,
            decay_start=family.decay_start if self.decay_start is None else self.decay_start,
        )
        config.validate()
        if config.eval_every and (config.model == "cyclegan" or (config.image_size, config.channels) != (28, 1)):
            raise ValueError(f"--eval-every scores with LeNet features: 28x28 grey noise-to-image runs only (this is "
                             f"{config.model} at {config.image_size}x{config.image_size}x{config.channels}); score "
                             "its checkpoints with fastgan eval --features inception")
        return config

    def validate(self) -> None:
        """ValueError naming the setting (as its flag) and the fix for anything that cannot run; nothing is loaded
        or built."""
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.data is not None and self.data not in DATASETS:
            raise ValueError(f"unknown dataset {self.data!r}; expected one of {', '.join(DATASETS)}")
        if self.data is not None and (self.model == "cyclegan") != (self.data in TWO_DOMAIN_DATA):
            if self.model == "cyclegan":
                raise ValueError(
                    f"cyclegan translates between two image domains: it needs --data digit-styles (the default) or "
                    f"unpaired (a folder with trainA/ and trainB/), not {self.data!r}"
                )
            raise ValueError(
                f"--data {self.data} holds two image domains for cyclegan; model {self.model!r} needs one "
                "(digits, mnist, fashion-mnist, cifar10, folder)"
            )
        if self.data in ("folder", "unpaired") and not self.data_root:
            raise ValueError(f"--data {self.data} needs --data-root (the folder of images)")
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.data == "folder" and self.split != "train":
            raise ValueError("--data folder has no splits: point --data-root at the folder you want (drop --split)")
        if self.image_size is not None:
            check_image_size(self.model, _positive("image_size", self.image_size))
        if self.conditional is not None:
            check_conditional(self.model, self.conditional)
            if self.sync_bn:
                raise ValueError(f"--sync-bn with --conditional {self.conditional}: the generator's conditional batch "
                                 "norms are not synchronised across processes; drop --sync-bn (each process then "
                                 "normalises with its own slice's statistics)")
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        for name in ("steps", "z_dim", "ngf", "ndf", "num_samples", "sample_every", "checkpoint_every", "log_every",
                     "eval_num"):
            _positive(name, getattr(self, name))
        for name in ("batch_size", "n_critic", "n_blocks"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("keep_every", "pool_size", "workers", "eval_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {self.impl!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.decay_start is not None and not 0.0 <= self.decay_start <= 1.0:
            raise ValueError(f"decay_start must be a fraction in [0, 1], got {self.decay_start}")
        if self.betas is not None and (len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if isinstance(self.r1_gamma, bool) or not isinstance(self.r1_gamma, int | float) or not self.r1_gamma >= 0:
            raise ValueError(f"r1_gamma must be a number >= 0, got {self.r1_gamma!r}")
        _positive("r1_every", self.r1_every)
        if self.r1_gamma > 0 and self.model == "cyclegan":
            raise ValueError("--r1-gamma applies to the noise-to-image families (gan, dcgan, wgan, wgan-gp), not "
                             "cyclegan; drop it")
        device = resolve_device(self.device)
        if self.cuda_graphs:
            _check_cuda_graphs(self, device)
        if self.impl != "auto":
            from .._backend import available_impls

            usable, reason = available_impls()[self.impl][device.type]
            if not usable:
                raise ValueError(f"--impl {self.impl} cannot run on {device.type} here: {reason}")

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


def _check_cuda_graphs(config: TrainConfig, device: torch.device) -> None:
    """What ``--cuda-graphs`` cannot replay, refused by name."""
    if device.type != "cuda":
        raise ValueError(f"--cuda-graphs replays CUDA graphs: it needs a CUDA device, and this run is on "
                         f"{device.type}; drop --cuda-graphs")
    if config.amp == "fp16":
        raise ValueError("--cuda-graphs with --amp fp16: the GradScaler's skipped steps and scale updates are not "
                         "replayed by a graph here; use --amp bf16 (no scaler) or drop --cuda-graphs")
    if config.model == "cyclegan" and config.pool_size > 0:
        raise ValueError("--cuda-graphs with cyclegan: the image pool (--pool-size) picks its images on the host every "
                         "step; use --pool-size 0 or drop --cuda-graphs")


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


# --- settings by kind, config files ---------------------------------------------------------------------------------


def setting_kind(name: str) -> type:
    """The value type of TrainConfig field ``name``: bool, int, float, str, tuple (betas) or dict (extra)."""
    return _KINDS[name]


def _kinds() -> dict[str, type]:
    kinds = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        kinds[name] = typing.get_origin(args[0]) or args[0]
    return kinds


_KINDS = _kinds()


def check_setting(name: str, value, where: str):
    """``value`` as TrainConfig field ``name`` takes it (an int is a valid float, a list a valid pair); ValueError
    naming ``where`` (a file or a flag) when the field is unknown or the value has the wrong type."""
    if name not in _KINDS:
        raise ValueError(f"{where}: unknown setting {name!r}; the settings are {', '.join(_KINDS)}")
    kind = _KINDS[name]
    numbers = (int, float)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, numbers) and not isinstance(value, bool),
        str: isinstance(value, str),
        tuple: isinstance(value, list | tuple) and all(isinstance(v, numbers) and not isinstance(v, bool)
                                                       for v in value),
        dict: isinstance(value, dict),
    }[kind]
    if not ok:
        expected = {tuple: "a list of numbers", dict: "a table"}.get(kind, kind.__name__)
        raise ValueError(f"{where}: {name} must be {expected}, got {value!r}")
    if kind is float:
        return float(value)
    if kind is tuple:
        return tuple(float(v) for v in value)
    return value


def read_config_file(path: str | os.PathLike[str]) -> dict:
    """The TrainConfig settings of a TOML file: keys are field names (``lr_g`` or ``lr-g``), ``[extra]`` a table.
    FileNotFoundError / ValueError name the file and the bad key."""
    try:
        import tomllib
    except ImportError as err:  # Python 3.10
        raise ValueError(f"--config {path}: reading TOML needs Python 3.11 or newer (tomllib)") from err
    try:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--config {path}: no such file") from err
    except IsADirectoryError as err:
        raise ValueError(f"--config {path}: is a folder, expected a .toml file") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path}: not valid TOML: {err}") from err
    return {key.replace("-", "_"): check_setting(key.replace("-", "_"), value, f"--config {path}")
            for key, value in values.items()}


def config_toml(config: TrainConfig) -> str:
    """``config`` as TOML that ``read_config_file`` reads back (None settings are left out: TOML has no null)."""
    values = config.to_dict()
    extra = values.pop("extra")
    lines = ["# fastgan train settings (fastgan train --config FILE reads them; flags override)"]
    lines += [f"{name} = {_toml_value(value)}" for name, value in values.items() if value is not None]
    if extra:
        lines += ["", "[extra]"] + [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # a JSON string is a TOML basic string
