"""``fastgan train``, ``fastgan sample`` and ``fastgan classify``: their arguments and what they run (``COMMANDS``,
listed by fastgan.cli).

``fastgan train`` has one flag per ``TrainConfig`` field (``lr_g`` -> ``--lr-g``, help from the field's metadata),
reads ``--config FILE.toml`` (the same names as keys) with flags overriding it, and answers every bad input with one
line naming the flag and the fix, exit status 2, before any work. Ctrl-C or SIGTERM ends training after the current
step with a checkpoint, says how to continue, and exits with 128 + the signal number; a second signal stops at once
(the checkpoint on disk stays the last complete one: checkpoints are written atomically).

Under ``torchrun`` every process runs this command; rank 0 alone prints, clears an ``--overwrite`` folder and
writes, and all leave the process group together at the end (:mod:`fastgan.train.distributed`).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from pathlib import Path

from .._cli_errors import command_error, one_line, user_errors
from .config import FAMILIES, IMPLS, TrainConfig, check_setting, read_config_file, setting_kind

_SETTINGS = dataclasses.fields(TrainConfig)
_GROUPS = {"run": "run", "model": "model", "optimisation": "optimisation (defaults: the family's published settings)",
           "output": "output"}
_METAVARS = {int: "N", float: "X", str: "VALUE"}


def _family_default(attribute: str) -> str:
    """'(default: the family's: gan 0.0002, ...)' for a setting whose None default comes from FamilyDefaults."""
    def show(value) -> str:
        return "none" if value is None else " ".join(map(str, value)) if isinstance(value, tuple) else str(value)

    return "(default: the family's: " + ", ".join(f"{name} {show(getattr(f, attribute))}"
                                                  for name, f in FAMILIES.items()) + ")"


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--extra``; VALUE read as a TOML value when it is one (3, 0.5, true), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        import tomllib

        return key, tomllib.loads(f"v = {value}")["v"]
    except (ImportError, ValueError):
        return key, value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    files = parser.add_argument_group("run folder and config file")
    files.add_argument("--config", metavar="FILE.toml",
                       help="read settings from a TOML file (keys: the flags' names, e.g. lr_g = 1e-4); flags given "
                            "too override it; a run folder's config.toml is one (default: none)")
    files.add_argument("--resume", action="store_true",
                       help="continue the run saved in --out (or --checkpoint) (default: start a new run)")
    files.add_argument("--checkpoint", metavar="PATH",
                       help="with --resume: the checkpoint to continue (default: <--out>/last.pt)")
    files.add_argument("--overwrite", action="store_true",
                       help="start a new run in an --out folder that holds one, deleting its checkpoints, metrics "
                            "and samples (default: refuse)")
    files.add_argument("--quiet", action="store_true", help="no progress output (default: a tqdm bar on a "
                       "terminal, one line per --log-every steps otherwise)")
    groups = {name: parser.add_argument_group(title) for name, title in _GROUPS.items()}
    for setting in _SETTINGS:
        meta, kind = setting.metadata, setting_kind(setting.name)
        flag = "--" + setting.name.replace("_", "-")
        text = meta["help"] + (" " + _family_default(meta["family"]) if meta["family"] else "")
        options = {"dest": setting.name, "default": None, "help": text}
        group = groups[meta["group"]]
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif kind is tuple:
            group.add_argument(flag, type=float, nargs=2, metavar=("B1", "B2"), **options)
        elif kind is dict:
            group.add_argument(flag, type=_key_value, action="append", metavar="KEY=VALUE", **options)
        else:
            choices = meta["choices"]
            metavar = None if choices else meta["metavar"] or _METAVARS[kind]
            if meta["const"] is not None:  # --conditional alone means --conditional projection
                options.update(nargs="?", const=meta["const"])
            group.add_argument(flag, type=kind, choices=choices, metavar=metavar, **options)


def _settings(args: argparse.Namespace) -> dict:
    """The TrainConfig fields set by ``--config`` and by flags (flags win; unset flags are None and not counted)."""
    values = read_config_file(args.config) if args.config else {}
    for setting in _SETTINGS:
        value = getattr(args, setting.name)
        if value is None:
            continue
        if setting.name == "extra":
            value = {**values.get("extra", {}), **dict(value)}
        values[setting.name] = check_setting(setting.name, value, "--" + setting.name.replace("_", "-"))
    return values


class _Interrupts:
    """SIGINT / SIGTERM while ``fastgan train`` runs: the first asks the trainer to stop after its current step (it
    then saves), a second one, or one before training started, raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.trainer = None
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set signal handlers
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if self.trainer is None or not first:
            raise KeyboardInterrupt
        self.trainer.request_stop()


def train(args: argparse.Namespace) -> int:
    from .checkpoint import LAST

    with _Interrupts() as interrupts:
        try:
            return _train(args, interrupts)
        except KeyboardInterrupt:
            signum = interrupts.signum or signal.SIGINT
            trainer = interrupts.trainer
            if trainer is not None and (trainer.out / LAST).is_file():
                where = (f"the last complete checkpoint is {trainer.out / LAST}; continue with: "
                         f"fastgan train --resume --out {trainer.out}")
            else:
                where = "nothing was saved"
            print(f"fastgan train: interrupted by {signal.Signals(signum).name}; {where}", file=sys.stderr)
            return 128 + signum


def _train(args: argparse.Namespace, interrupts: _Interrupts) -> int:
    from .checkpoint import LAST
    from .trainer import Trainer, clear_run, previous_run

    try:
        given = _settings(args)
        if args.resume:
            if args.overwrite:
                return command_error("train", "--overwrite starts a new run; it cannot be combined with --resume")
            if args.checkpoint:
                checkpoint = Path(args.checkpoint)
            else:
                out = given.get("out") or TrainConfig(model=given.get("model", "dcgan"),
                                                      data=given.get("data")).resolved().out
                checkpoint = Path(out) / LAST
            if not checkpoint.is_file():
                return command_error("train", f"--resume: no checkpoint at {checkpoint}")
            trainer = Trainer.resume(checkpoint, verbose=not args.quiet, **given)
        else:
            if args.checkpoint:
                return command_error("train", "--checkpoint is only meaningful with --resume")
            config = TrainConfig(**given).resolved()  # every check before any data is read
            earlier = previous_run(config.out)
            if earlier and not args.overwrite:
                names = ", ".join(path.name for path in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
                return command_error("train", f"{config.out} already holds a run ({names}): pass --resume to "
                                     "continue it, or --overwrite to start a new one there (deletes them)")
            trainer = Trainer(config, verbose=not args.quiet)
            if trainer.parallel.is_main:
                clear_run(config.out)  # only once the new run could be built (by every process: it broadcasts)
    except user_errors() as err:
        return command_error("train", one_line(err))
    interrupts.trainer = trainer
    config, parallel = trainer.config, trainer.parallel
    main = parallel.is_main
    if trainer.step >= config.steps:
        if main:
            print(f"{trainer.out} is already at step {trainer.step} of {config.steps}: pass a larger --steps to go on")
        return 0
    if main:
        print(f"training {config.model} on {config.data} ({config.image_size}x{config.image_size}x{config.channels}), "
              f"{config.steps} steps from step {trainer.step}, batch {config.batch_size}, device {trainer.device}"
              f"{' (rank 0)' if parallel.enabled else ''}, {parallel.describe()}, impl {config.impl}, amp {config.amp} "
              f"-> {trainer.out}")
    try:
        row = trainer.fit()
        parallel.close()
    except user_errors() as err:  # e.g. an image file that cannot be decoded, found when its batch is read
        return command_error("train", one_line(err))
    except RuntimeError:  # under torchrun, a collective fails when a peer process dies
        parallel.wait_for_watchdog()  # which then ends this process with a message naming the dead rank
        raise
    if not main:
        return 128 + (interrupts.signum or signal.SIGINT) if trainer.stop_requested else 0
    if trainer.stop_requested:
        name = signal.Signals(interrupts.signum).name if interrupts.signum else "request"
        print(f"fastgan train: stopped by {name} at step {trainer.step} of {config.steps}; checkpoint saved to "
              f"{trainer.out / LAST}; continue with: fastgan train --resume --out {trainer.out}", file=sys.stderr)
        return 128 + (interrupts.signum or signal.SIGINT)
    samples = sorted((trainer.out / "samples").glob("*.png"))
    print(f"done: step {trainer.step}, {row.get('steps_per_s', 0.0):.2f} steps/s over the last interval")
    print(f"  samples:     {samples[-1] if samples else trainer.out / 'samples'}")
    print(f"  checkpoint:  {trainer.out / LAST}")
    print(f"  metrics:     {trainer.out / 'metrics.csv'}")
    print(f"  settings:    {trainer.out / 'config.toml'}")
    return 0


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a .pt file or a run folder (required; no default)")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="X.png: one grid; X.npy: uint8 array [N, H, W, C]; anything else: a folder of PNGs "
                             "(required; no default)")
    parser.add_argument("--num", type=int, default=64, metavar="N", help="number of images (default: 64)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the generator's input noise; the same seed gives the same images (default: 0)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ... (default: auto)")
    parser.add_argument("--impl", choices=IMPLS, default=None,
                        help="implementation of fastgan's ops (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N",
                        help="images generated at a time (default: 256)")
    parser.add_argument("--no-ema", action="store_true",
                        help="sample the trained generator, not its EMA (default: the EMA when the run kept one)")
    parser.add_argument("--class", dest="klass", metavar="K",
                        help="conditional runs: images of class K (an index or a class name), or all: --num images of "
                             "every class, one class per grid row (default: the classes in turn)")


def sample(args: argparse.Namespace) -> int:
    from .sampling import class_labels, load_networks, write_samples

    if args.num < 1 or args.batch_size < 1:
        return command_error("sample", "--num and --batch-size must be positive")
    try:
        nets, config, device, classes = load_networks(args.checkpoint, None, args.device, args.impl, not args.no_ema)
        labels, nrow = class_labels(args.klass, classes, args.num) if args.klass is not None else (None, None)
        num = args.num if labels is None else len(labels)
        generator = next(iter(nets.values()))
        path = write_samples(generator, config, device, num, args.out, args.seed, args.batch_size, labels, nrow)
    except user_errors() as err:
        return command_error("sample", one_line(err))
    print(f"wrote {num} {config.image_size}x{config.image_size} images to {path}")
    return 0


def add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a .pt file or run folder of fastgan train --conditional acgan (required; no default)")
    parser.add_argument("--data", default=None, metavar="NAME",
                        help="labelled dataset to report the accuracy on, its test split (digits and folder: all "
                             "images) (default: the run's)")
    parser.add_argument("--data-root", default=None, metavar="PATH", help="its folder (default: the run's)")
    parser.add_argument("--images", default=None, metavar="FOLDER",
                        help="classify every image in this folder instead: one line 'path class' each")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ... (default: auto)")
    parser.add_argument("--impl", choices=IMPLS, default=None,
                        help="implementation of fastgan's ops (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N",
                        help="images classified at a time (default: 256)")


def classify(args: argparse.Namespace) -> int:
    from .classify import accuracy, classify_folder, evaluation_dataset, load_classifier

    if args.batch_size < 1:
        return command_error("classify", "--batch-size must be positive")
    try:
        D, config, device, classes = load_classifier(args.checkpoint, args.device, args.impl)
        if args.images is not None:
            for path, label in classify_folder(D, config, device, args.images, args.batch_size):
                print(f"{path}\t{classes[label]}")
            return 0
        dataset, split = evaluation_dataset(config, args.data, args.data_root)
        score, count = accuracy(D, dataset, device, args.batch_size)
    except user_errors() as err:
        return command_error("classify", one_line(err))
    print(f"accuracy {score:.4f} ({round(score * count)}/{count} images of {args.data or config.data}, {split} "
          f"split) of the acgan discriminator's classifier")
    return 0


# Subcommand name -> (help, function adding its arguments, function running it), as fastgan.cli.COMMANDS.
COMMANDS = {
    "train": ("train a GAN family (default: a DCGAN on the bundled digits, written under runs/)", add_train_arguments,
              train),
    "sample": ("generate images from a checkpoint as a PNG grid, a folder of PNGs or a .npy array",
               add_sample_arguments, sample),
    "classify": ("recognise images with the classifier of an acgan run's discriminator: its accuracy on a labelled "
                 "dataset, or the class of each image in a folder", add_classify_arguments, classify),
}
