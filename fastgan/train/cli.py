"""``fastgan train`` and ``fastgan sample``: argument definitions and the commands (registered in fastgan.cli)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from ..cli import command
from ..data import DATASETS
from ..models import MODELS
from .config import AMP_MODES, IMPLS, TrainConfig

_DEFAULTS = TrainConfig()


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    run.add_argument("--model", choices=MODELS, default=None, help="GAN family (default: dcgan)")
    run.add_argument("--data", choices=DATASETS, default=None,
                     help="dataset (default: digits, scikit-learn's bundled handwritten digits: no download)")
    run.add_argument("--data-root", default=None, metavar="PATH",
                     help="dataset folder (mnist/fashion-mnist/cifar10 default to ~/.cache/fastgan/<name>)")
    run.add_argument("--download", action="store_true", default=None,
                     help="download mnist / fashion-mnist / cifar10 into --data-root if missing")
    run.add_argument("--image-size", type=int, default=None, metavar="N",
                     help="image side: 28 or a power of two 16..128 for dcgan/wgan/wgan-gp; default from the data")
    run.add_argument("--channels", type=int, choices=(1, 3), default=None, help="default: the dataset's own")
    run.add_argument("--batch-size", type=int, default=None, metavar="N", help=f"default {_DEFAULTS.batch_size}")
    run.add_argument("--steps", type=int, default=None, metavar="N",
                     help=f"generator steps in total (default {_DEFAULTS.steps})")
    run.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/<model>-<data>)")
    run.add_argument("--resume", action="store_true", help="continue the run saved in --out (or --checkpoint)")
    run.add_argument("--checkpoint", default=None, metavar="PATH", help="with --resume: the checkpoint to continue")
    run.add_argument("--seed", type=int, default=None, metavar="N", help=f"default {_DEFAULTS.seed}")
    run.add_argument("--device", default=None, help="auto (cuda if available), cpu, cuda, cuda:1 ... (default auto)")
    run.add_argument("--impl", choices=IMPLS, default=None, help="fastgan op implementation (default auto)")
    run.add_argument("--amp", choices=AMP_MODES, default=None, help="mixed precision (default off)")
    run.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format")
    model = parser.add_argument_group("model and optimisation (defaults: the family's published settings)")
    model.add_argument("--z-dim", type=int, default=None)
    model.add_argument("--ngf", type=int, default=None, help=f"generator width (default {_DEFAULTS.ngf})")
    model.add_argument("--ndf", type=int, default=None, help=f"discriminator width (default {_DEFAULTS.ndf})")
    model.add_argument("--n-blocks", type=int, default=None, help="cyclegan residual blocks (6 or 9)")
    model.add_argument("--lr-g", type=float, default=None)
    model.add_argument("--lr-d", type=float, default=None)
    model.add_argument("--n-critic", type=int, default=None, help="critic steps per generator step")
    model.add_argument("--ema-decay", type=float, default=None, help="generator EMA decay, 0 disables (0.999)")
    output = parser.add_argument_group("output")
    output.add_argument("--log-every", type=int, default=None, metavar="N")
    output.add_argument("--sample-every", type=int, default=None, metavar="N")
    output.add_argument("--checkpoint-every", type=int, default=None, metavar="N")
    output.add_argument("--keep-every", type=int, default=None, metavar="N",
                        help="also keep step_N.pt every N steps (default: only last.pt)")
    output.add_argument("--quiet", action="store_true", help="no progress line")


def _given(args: argparse.Namespace) -> dict:
    """The TrainConfig fields set on the command line (flags left at None are not)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {name: value for name, value in vars(args).items() if name in names and value is not None}


def _error(name: str, message: str) -> int:
    print(f"fastgan {name}: error: {message}", file=sys.stderr)
    return 2


@command("train", "train a GAN family (default: a DCGAN on the bundled digits, written under runs/)",
         add_train_arguments)
def train(args: argparse.Namespace) -> int:
    from .._backend import ImplUnavailableError
    from .checkpoint import LAST
    from .trainer import Trainer

    given = _given(args)
    try:
        if args.resume:
            checkpoint = Path(args.checkpoint) if args.checkpoint else Path(
                given.get("out") or TrainConfig(**{k: v for k, v in given.items() if k in ("model", "data")})
                .resolved().out
            ) / LAST
            if not checkpoint.is_file():
                return _error("train", f"--resume: no checkpoint at {checkpoint}")
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["config"]
            conflicts = [k for k, v in given.items() if k in saved and saved[k] != v and k not in _RESUMABLE]
            if conflicts:
                return _error("train", "--resume continues the saved run; these flags differ from it: "
                              + ", ".join(f"--{k.replace('_', '-')}" for k in conflicts))
            trainer = Trainer.resume(checkpoint, verbose=not args.quiet,
                                     **{k: v for k, v in given.items() if k in _RESUMABLE})
        else:
            if args.checkpoint:
                return _error("train", "--checkpoint is only meaningful with --resume")
            config = TrainConfig(**given).resolved()  # every check before any data is read
            trainer = Trainer(config, verbose=not args.quiet)
    except (ValueError, FileNotFoundError, ImplUnavailableError) as err:
        return _error("train", str(err))
    config = trainer.config
    if trainer.step >= config.steps:
        print(f"{trainer.out} is already at step {trainer.step} of {config.steps}: pass a larger --steps to go on")
        return 0
    print(f"training {config.model} on {config.data} ({config.image_size}x{config.image_size}x{config.channels}), "
          f"{config.steps} steps from step {trainer.step}, batch {config.batch_size}, device {trainer.device}, "
          f"impl {config.impl}, amp {config.amp} -> {trainer.out}")
    row = trainer.fit()
    samples = sorted((trainer.out / "samples").glob("*.png"))
    print(f"done: step {trainer.step}, {row.get('steps_per_s', 0.0):.2f} steps/s over the last interval")
    print(f"  samples:     {samples[-1] if samples else trainer.out / 'samples'}")
    print(f"  checkpoint:  {trainer.out / LAST}")
    print(f"  metrics:     {trainer.out / 'metrics.csv'}")
    return 0


_RESUMABLE = {"steps", "out", "device", "impl", "log_every", "sample_every", "checkpoint_every", "keep_every",
              "data_root", "download"}


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a .pt file or a run folder")
    parser.add_argument("--num", type=int, default=64, metavar="N", help="number of images (default 64)")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="X.png: one grid; X.npy: uint8 array [N, H, W, C]; anything else: a folder of PNGs")
    parser.add_argument("--seed", type=int, default=0, metavar="N")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--impl", choices=IMPLS, default=None)
    parser.add_argument("--batch-size", type=int, default=256, metavar="N", help="images generated at a time")
    parser.add_argument("--no-ema", action="store_true", help="sample the trained generator, not its EMA")


@command("sample", "generate images from a checkpoint as a PNG grid, a folder of PNGs or a .npy array",
         add_sample_arguments)
def sample(args: argparse.Namespace) -> int:
    from .._backend import ImplUnavailableError
    from .sampling import load_generator, write_samples

    if args.num < 1 or args.batch_size < 1:
        return _error("sample", "--num and --batch-size must be positive")
    try:
        generator, config, device = load_generator(args.checkpoint, args.device, args.impl, not args.no_ema)
        path = write_samples(generator, config, device, args.num, args.out, args.seed, args.batch_size)
    except (ValueError, FileNotFoundError, ImplUnavailableError) as err:
        return _error("sample", str(err))
    print(f"wrote {args.num} {config.image_size}x{config.image_size} images to {path}")
    return 0
