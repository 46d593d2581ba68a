"""``fastgan eval``: FID, KID, IS and precision/recall of a run's generator against held-out real images.

Real images: the dataset's test split when it has one (held out from GAN training), else its train split. Features:
``lenet`` (28x28 grey data only; trained on the labelled train split on first use, cached; when the train split is
absent, on a seeded half of the test split, the other half then being the real reference) or ``inception`` (FID's
InceptionV3, weights from ``--inception-weights`` / ``$FASTGAN_INCEPTION_WEIGHTS``). The table goes to stdout; the
same numbers, with everything needed to reproduce them, to ``eval-<features>.json`` in the run folder (atomically).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .._cli_errors import command_error, one_line, user_errors
from .evaluate import METRICS, parse_metrics, real_data

_FEATURES = ("lenet", "inception")
_LABELS = {"fid": "FID", "kid_mean": "KID (mean)", "kid_std": "KID (std)", "is_mean": "IS (mean)",
           "is_std": "IS (std)", "precision": "precision", "recall": "recall"}


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="RUN",
                        help="a run folder or a .pt checkpoint (required; no default)")
    parser.add_argument("--data", default=None, help="the real data's name (default: the run's --data)")
    parser.add_argument("--data-root", default=None, metavar="PATH", help="its folder (default: the run's)")
    parser.add_argument("--num", type=int, default=10000, metavar="N",
                        help="generated images, and at most as many real ones (default: 10000)")
    parser.add_argument("--metrics", default="fid,kid,is,pr", metavar="LIST",
                        help=f"comma-separated, of {', '.join(METRICS)} (default: fid,kid,is,pr)")
    parser.add_argument("--features", choices=_FEATURES, default=None,
                        help="feature network (default: lenet for 28x28 grey data, else inception)")
    parser.add_argument("--inception-weights", default=None, metavar="PATH",
                        help="FID Inception weights file (default: $FASTGAN_INCEPTION_WEIGHTS; never downloaded)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the generator's noise and of KID's subsets (default: 0)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ... (default: auto)")
    parser.add_argument("--batch-size", type=int, default=500, metavar="N",
                        help="images generated and featurised at a time (default: 500)")
    parser.add_argument("--no-ema", action="store_true",
                        help="score the trained generator, not its EMA (default: the EMA when the run kept one)")
    parser.add_argument("--out", default=None, metavar="FILE.json",
                        help="where to write the JSON (default: <run folder>/eval-<features>.json)")


def run_eval(args: argparse.Namespace) -> int:
    from ..train.sampling import generate, load_generator

    try:
        metrics = parse_metrics(args.metrics)
    except ValueError as err:
        return command_error("eval", f"--metrics: {err}")
    if args.num < 2:
        return command_error("eval", f"--num must be at least 2 (scores need two samples), got {args.num}")
    if args.batch_size < 1:
        return command_error("eval", f"--batch-size must be positive, got {args.batch_size}")
    try:
        started = time.perf_counter()
        generator, config, device = load_generator(args.checkpoint, args.device, None, not args.no_ema)
        if config.model == "cyclegan":
            return command_error("eval", "--checkpoint: a cyclegan run translates images; fastgan eval scores "
                                 "noise-to-image generators (gan, dcgan, wgan, wgan-gp)")
        features = args.features or ("lenet" if (config.image_size, config.channels) == (28, 1) else "inception")
        if features == "lenet" and (config.image_size, config.channels) != (28, 1):
            return command_error("eval", f"--features lenet needs 28x28 grey images; this run makes "
                                 f"{config.image_size}x{config.image_size}x{config.channels}: use --features inception")
        data = args.data or config.data
        root = args.data_root if args.data_root is not None else config.data_root
        real = real_data(data, root, config.image_size, config.channels, args.seed, features == "lenet")
        extract, about = _extractor(features, real, args, device)
        reference = real["reference"][: args.num]
        fake = generate(generator, config, device, args.num, args.seed, args.batch_size)
        from .evaluate import evaluate_images

        scores = evaluate_images(fake, reference, extract, metrics, args.seed, args.batch_size)
    except user_errors() as err:
        return command_error("eval", one_line(err))
    run = Path(args.checkpoint)
    folder = run if run.is_dir() else run.parent
    out = Path(args.out) if args.out else folder / f"eval-{features}.json"
    record = {"checkpoint": str(run.resolve()), "ema": not args.no_ema, "features": features, **about,
              "data": data, "data_root": str(root) if root is not None else None, "real": real["note"],
              "num_generated": fake.shape[0], "num_real": reference.shape[0], "seed": args.seed,
              "metrics": metrics, "scores": scores, "seconds": round(time.perf_counter() - started, 2)}
    _write_json(out, record)
    print(f"fastgan eval: {run} ({'EMA' if record['ema'] else 'raw'} generator), {fake.shape[0]} generated vs "
          f"{reference.shape[0]} real {data} images, {features} features")
    print(f"  {'real images':<22}{real['note']}")
    for key, value in about.items():
        print(f"  {key:<22}{value}")
    for key, value in scores.items():
        print(f"  {_LABELS[key]:<22}{value:.6g}")
    print(f"  written to            {out}")
    return 0


def _extractor(features: str, real: dict, args: argparse.Namespace, device: torch.device):
    """(images -> (features, logits), facts to report about the feature network)."""
    if features == "lenet":
        from .lenet import cached_lenet

        if bool((real["train"][1] < 0).any()):
            raise ValueError("--features lenet needs labelled real images to train on; this dataset has no labels")
        net, accuracy, file, trained = cached_lenet(real["train"], real["held_out"])
        net = net.to(device)
        return net.features, {"lenet_accuracy": round(accuracy, 4), "lenet_cache": str(file),
                              "lenet_trained_now": trained}
    from .inception import load_inception

    net = load_inception(args.inception_weights, device)
    return net.features, {"inception_weights": str(Path(args.inception_weights or "").resolve())
                          if args.inception_weights else "$FASTGAN_INCEPTION_WEIGHTS"}


def _write_json(path: Path, record: dict) -> None:
    from .._io import atomic_writer

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as handle:
        handle.write((json.dumps(record, indent=2) + "\n").encode())


COMMANDS = {
    "eval": ("score a run's generator against real images: FID, KID, IS, precision/recall (LeNet or Inception "
             "features)", add_eval_arguments, run_eval),
}
