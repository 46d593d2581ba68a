"""Every requested score of generated images against real ones, from one feature network (``fastgan eval``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .scores import frechet_distance, inception_score, kernel_inception_distance, precision_recall

# Metric name -> what it reports (the keys of evaluate_images' result).
METRICS = {
    "fid": ("fid",),
    "kid": ("kid_mean", "kid_std"),
    "is": ("is_mean", "is_std"),
    "pr": ("precision", "recall"),
}

# images [N, C, H, W] in [-1, 1] -> (features [N, D], class logits [N, K]), both float32 on the CPU.
Extractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """``"fid,kid"`` -> ``["fid", "kid"]``; an unknown name raises ValueError listing the known ones."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}: choose from "
                         f"{', '.join(METRICS)} (comma-separated)")
    return list(dict.fromkeys(names))


def batched_features(extract: Extractor, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """``extract`` over ``images`` a batch at a time, concatenated."""
    feats, logits = [], []
    for start in range(0, images.shape[0], batch_size):
        f, g = extract(images[start : start + batch_size])
        feats.append(f.float().cpu())
        logits.append(g.float().cpu())
    return torch.cat(feats), torch.cat(logits)


def scores_of_features(
    real: torch.Tensor, fake: torch.Tensor, fake_logits: torch.Tensor | None, metrics: Sequence[str],
    seed: int = 0, k: int = 3,
) -> dict[str, float]:
    """The scores named in ``metrics`` from real and fake features ``[N, D]`` (and the fakes' logits for IS).

    KID uses 100 subsets of ``min(1000, N_real, N_fake)`` samples; IS ``min(10, N)`` splits; PR ``k`` neighbours.
    """
    out: dict[str, float] = {}
    for name in metrics:
        if name == "fid":
            out["fid"] = frechet_distance(real, fake)
        elif name == "kid":
            size = min(1000, real.shape[0], fake.shape[0])
            out["kid_mean"], out["kid_std"] = kernel_inception_distance(real, fake, 100, size, seed)
        elif name == "is":
            if fake_logits is None:
                raise ValueError("evaluate: the Inception Score needs class logits")
            out["is_mean"], out["is_std"] = inception_score(fake_logits, min(10, fake_logits.shape[0]))
        elif name == "pr":
            out["precision"], out["recall"] = precision_recall(real, fake, k)
        else:
            raise ValueError(f"evaluate: unknown metric {name!r}: choose from {', '.join(METRICS)}")
    return out


def evaluate_images(
    fake: torch.Tensor, real: torch.Tensor, extract: Extractor, metrics: Sequence[str] = ("fid", "kid", "is", "pr"),
    seed: int = 0, batch_size: int = 500,
) -> dict[str, float]:
    """Scores of generated images ``fake`` against ``real`` (both ``[N, C, H, W]`` in [-1, 1]) with the features
    of ``extract``. Returns a dict with the keys of ``METRICS`` for each requested metric."""
    real_feats, _ = batched_features(extract, real, batch_size)
    fake_feats, fake_logits = batched_features(extract, fake, batch_size)
    return scores_of_features(real_feats, fake_feats, fake_logits, metrics, seed)


def _as_float_images(dataset) -> torch.Tensor:
    """All images of a dataset as float32 [N, C, S, S] in [-1, 1] (fixed-size datasets without a per-item copy)."""
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor) and getattr(dataset, "image_size", None) in (None, images.shape[-1]) \
            and dataset.channels == images.shape[1]:
        return images.float().div(127.5).sub(1.0)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def _load_split(name: str, root, size: int, channels: int, split: str):
    """A split of a named dataset, or None when its files are absent."""
    from ..data import make_dataset

    try:
        return make_dataset(name, root, size, channels, split, cli=True)
    except FileNotFoundError:
        return None


def real_data(name: str, root, size: int, channels: int, seed: int = 0, lenet: bool = True) -> dict:
    """Real images for evaluation, and labelled images for LeNet: {"reference", "train", "held_out", "note"}."""
    test = _load_split(name, root, size, channels, "test")
    train = _load_split(name, root, size, channels, "train")
    if test is None and train is None:
        from ..data import make_dataset

        make_dataset(name, root, size, channels, "train", cli=True)  # raises the dataset's own message
    which = "test" if test is not None else "train"
    if not lenet:
        only = test if test is not None else train
        return {"reference": _as_float_images(only), "train": None, "held_out": None,
                "note": f"reference: the {which} split"}
    if test is not None and train is not None:
        reference = _as_float_images(test)
        return {"reference": reference, "train": (_as_float_images(train), train.labels),
                "held_out": (reference, test.labels), "note": "reference: test split; LeNet trained on train split"}
    only = test if test is not None else train
    images, labels = _as_float_images(only), only.labels
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    half = images.shape[0] // 2
    first, second = order[:half], order[half:]
    return {"reference": images[second], "train": (images[first], labels[first]),
            "held_out": (images[second], labels[second]),
            "note": f"only the {which} split is present: LeNet trained on a seeded half of it, the other half "
                    f"({images.shape[0] - half} images) is the real reference"}


# The columns ``fastgan train --eval-every`` adds to metrics.csv.
QUALITY_FIELDS = ("lenet_fid", "precision", "recall")


class QualityMonitor:
    """LeNet-FID, precision and recall of a generator during training (``fastgan train --eval-every``).

    The real images and the LeNet (trained on first use, cached as ``fastgan eval`` caches it) are those of
    ``fastgan eval --features lenet`` on the same data, so the numbers are the ones it would print for the same
    generator, noise seed and number of images. Touches no random state but its own generator's.
    """

    def __init__(self, data: str, root, seed: int = 0) -> None:
        self.data, self.root, self.seed = data, root, seed
        self._net = None
        self._reference: torch.Tensor | None = None

    def _prepare(self) -> None:
        from .lenet import cached_lenet

        real = real_data(self.data, self.root, 28, 1, self.seed, lenet=True)
        with torch.random.fork_rng(devices=[]), torch.enable_grad():  # called under no_grad; LeNet may need training
            self._net, _, _, _ = cached_lenet(real["train"], real["held_out"])
        self._reference = self._net.features(real["reference"])[0]

    @torch.no_grad()
    def __call__(self, generator: torch.nn.Module, z_dim: int, device: torch.device, num: int) -> dict[str, float]:
        if self._net is None:
            self._prepare()
        was_training = generator.training
        generator.eval()
        noise = torch.Generator(device).manual_seed(self.seed)
        images = torch.cat([generator(torch.randn(min(500, num - s), z_dim, generator=noise, device=device)).float()
                            .cpu() for s in range(0, num, 500)])
        generator.train(was_training)
        fake = self._net.features(images)[0]
        reference = self._reference[:num]  # fastgan eval --num N compares with N real images too
        precision, recall = precision_recall(reference, fake)
        return {"lenet_fid": frechet_distance(reference, fake), "precision": precision, "recall": recall}
