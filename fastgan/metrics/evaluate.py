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
