"""Sample-quality scores computed from features: FID, KID, IS, precision/recall, in float64.

Every function takes features as ``[N, D]`` tensors (any floating dtype, any device; they are moved to float64 on
their device) and checks them first: a 2-D floating tensor, at least 2 rows, only finite values, the same ``D`` on
both sides. A failed check raises ``ValueError`` naming the function and the argument.
"""

from __future__ import annotations

import math

import torch

# Distance blocks of precision_recall hold at most this many float64 elements (128 MiB): 50k x 50k never needs its
# 20 GB matrix.
_BLOCK_ELEMENTS = 1 << 24


def _features(fn: str, name: str, x: torch.Tensor, min_rows: int = 2) -> torch.Tensor:
    """``x`` as float64 [N, D] after the checks every score makes (the error names ``fn`` and ``name``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor [N, D], got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{fn}: {name} must be 2-D [N, D], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{fn}: {name} must be a real floating tensor, got {x.dtype}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{fn}: {name} has {x.shape[0]} sample(s); at least {min_rows} are needed")
    if x.shape[1] < 1:
        raise ValueError(f"{fn}: {name} has no feature dimensions (shape {tuple(x.shape)})")
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise ValueError(f"{fn}: {name} holds NaN or inf features (in {bad} of {x.shape[0]} samples)")
    return x


def _same_dim(fn: str, a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{fn}: feature dimensions differ: {names[0]} has {a.shape[1]}, {names[1]} has "
                         f"{b.shape[1]} (features from different networks or layers?)")


class FeatureStats:
    """Running mean and covariance of feature vectors in float64, so FID over 50k images needs no feature bank.

    ``update(feats)`` adds a batch ``[B, D]``; ``merge(other)`` adds another accumulator (e.g. one per process or
    per shard) with Chan et al.'s pairwise formula, so the result does not depend on how the samples were split
    beyond rounding. ``mean`` and ``cov`` (unbiased, ``N - 1``, as ``numpy.cov`` which pytorch-fid and torch-fidelity
    use) are float64.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        if dim < 1:
            raise ValueError(f"FeatureStats: dim must be positive, got {dim}")
        self.dim = dim
        self.count = 0
        self._mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self._m2 = torch.zeros(dim, dim, dtype=torch.float64, device=device)  # sum of outer products of deviations

    def update(self, feats: torch.Tensor) -> FeatureStats:
        """Add a batch of features ``[B, dim]`` (B >= 1); returns self."""
        x = _features("FeatureStats.update", "feats", feats, min_rows=1)
        if x.shape[1] != self.dim:
            raise ValueError(f"FeatureStats.update: feature dimensions differ: the statistics have {self.dim}, "
                             f"feats has {x.shape[1]}")
        x = x.to(self._mean.device)
        mean = x.mean(0)
        centred = x - mean
        self._combine(x.shape[0], mean, centred.T @ centred)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add the samples another accumulator has seen; returns self."""
        if other.dim != self.dim:
            raise ValueError(f"FeatureStats.merge: feature dimensions differ: {self.dim} and {other.dim}")
        if other.count:
            self._combine(other.count, other._mean.to(self._mean.device), other._m2.to(self._mean.device))
        return self

    def _combine(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Chan's parallel update of (count, mean, M2) with a group of n samples."""
        total = self.count + n
        delta = mean - self._mean
        self._m2 += m2 + torch.outer(delta, delta) * (self.count * n / total)
        self._mean += delta * (n / total)
        self.count = total

    @property
    def mean(self) -> torch.Tensor:
        return self._mean.clone()

    @property
    def cov(self) -> torch.Tensor:
        if self.count < 2:
            raise ValueError(f"FeatureStats: the covariance needs at least 2 samples, {self.count} seen")
        return self._m2 / (self.count - 1)

    @classmethod
    def of(cls, feats: torch.Tensor) -> FeatureStats:
        """The statistics of one feature tensor ``[N, D]``."""
        return cls(feats.shape[-1] if feats.dim() == 2 else 1, feats.device).update(feats)

    def state_dict(self) -> dict:
        return {"dim": self.dim, "count": self.count, "mean": self._mean.cpu(), "m2": self._m2.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict) -> FeatureStats:
        stats = cls(int(state["dim"]))
        stats.count = int(state["count"])
        stats._mean = state["mean"].to(torch.float64)
        stats._m2 = state["m2"].to(torch.float64)
        return stats


def _psd_eigenvalues(values: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix with those below its numerical rank's cutoff (D * eps * the largest,
    as ``matrix_rank``) set to 0: a rank-deficient covariance's zero eigenvalues come out of ``eigh`` as +-1e-13,
    and the square root would turn each into 3e-7."""
    cutoff = values.shape[0] * torch.finfo(values.dtype).eps * values.abs().max()
    return torch.where(values > cutoff, values, torch.zeros_like(values))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric PSD square root of a symmetric PSD matrix."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * _psd_eigenvalues(values).sqrt()) @ vectors.T


def _stats(fn: str, name: str, x: torch.Tensor | FeatureStats) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(x, FeatureStats):
        if x.count < 2:
            raise ValueError(f"{fn}: {name} has {x.count} sample(s); at least 2 are needed")
        return x.mean, x.cov
    stats = FeatureStats.of(_features(fn, name, x))
    return stats.mean, stats.cov


def frechet_distance(feats_a: torch.Tensor | FeatureStats, feats_b: torch.Tensor | FeatureStats) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID when the features are Inception pool3).

    ``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``, in float64. ``feats_*`` are ``[N, D]``
    tensors or ``FeatureStats``. The trace of the square root is taken as ``tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))``,
    the same number (the two matrices are similar) computed from two symmetric eigen-decompositions: real, no
    complex parts to discard, and correct when a covariance is rank-deficient (fewer samples than dimensions), where
    ``scipy.linalg.sqrtm(S_a @ S_b)`` needs pytorch-fid's diagonal offset. Where ``sqrtm`` is well-conditioned the
    two agree to rounding. Returns a Python float >= 0 (rounding below 0 is clamped).
    """
    fn = "frechet_distance"
    mu_a, cov_a = _stats(fn, "feats_a", feats_a)
    mu_b, cov_b = _stats(fn, "feats_b", feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"{fn}: feature dimensions differ: feats_a has {mu_a.shape[0]}, feats_b has "
                         f"{mu_b.shape[0]} (features from different networks or layers?)")
    cov_b = cov_b.to(cov_a.device)
    root_a = _psd_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    trace_root = _psd_eigenvalues(torch.linalg.eigvalsh((inner + inner.T) / 2)).sqrt().sum()
    diff = mu_a - mu_b.to(mu_a.device)
    value = diff.dot(diff) + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return max(float(value), 0.0)


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The cubic polynomial kernel of KID, ``(x . y / d + 1)^3``."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 of two equal-size samples with the cubic kernel (diagonals of K_xx and K_yy left out)."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    same = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return same - 2 * k_xy.mean()


def kernel_inception_distance(
    feats_a: torch.Tensor, feats_b: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): (mean, std) of the unbiased MMD^2 over random subsets.

    Each of ``subsets`` rounds draws ``subset_size`` rows of each set without replacement (a ``torch.Generator``
    seeded with ``seed``: the same inputs give the same numbers) and computes the unbiased MMD^2 with the kernel
    ``k(x, y) = (x . y / D + 1)^3``; returns the mean and the (population) standard deviation over rounds, floats
    in float64. Unlike FID, KID is an unbiased estimate: near 0 (either sign) for two samples of one distribution.
    ``subset_size`` must not exceed either set's size.
    """
    fn = "kernel_inception_distance"
    a, b = _features(fn, "feats_a", feats_a), _features(fn, "feats_b", feats_b)
    _same_dim(fn, a, b, ("feats_a", "feats_b"))
    if subsets < 1:
        raise ValueError(f"{fn}: subsets must be >= 1, got {subsets}")
    if not 2 <= subset_size <= min(a.shape[0], b.shape[0]):
        raise ValueError(f"{fn}: subset_size {subset_size} must be between 2 and the smaller set's size "
                         f"({a.shape[0]} and {b.shape[0]} samples): lower subset_size or give more samples")
    b = b.to(a.device)
    rng = torch.Generator().manual_seed(seed)
    values = torch.empty(subsets, dtype=torch.float64)
    for i in range(subsets):
        ia = torch.randperm(a.shape[0], generator=rng)[:subset_size].to(a.device)
        ib = torch.randperm(b.shape[0], generator=rng)[:subset_size].to(a.device)
        values[i] = _mmd2_unbiased(a[ia], b[ib]).cpu()
    return float(values.mean()), float(values.std(unbiased=False))


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): (mean, std) over ``splits`` consecutive chunks of the samples.

    ``logits`` ``[N, C]`` are class logits (for FID's Inception, its 1008 unbiased logits); per chunk the score is
    ``exp(mean_i KL(p(y|x_i) || p(y)))`` with ``p(y)`` the chunk's mean prediction, computed in float64 from
    log-softmax (no log of 0). 1 for a generator whose every image gets the same prediction; at most C.
    """
    fn = "inception_score"
    x = _features(fn, "logits", logits)
    if not 1 <= splits <= x.shape[0]:
        raise ValueError(f"{fn}: splits must be between 1 and the number of samples ({x.shape[0]}), got {splits}")
    scores = []
    for chunk in torch.tensor_split(x, splits):
        log_p = torch.log_softmax(chunk, dim=1)
        log_mean = torch.logsumexp(log_p, dim=0) - math.log(chunk.shape[0])
        kl = (log_p.exp() * (log_p - log_mean)).sum(1).mean()
        scores.append(kl.exp())
    values = torch.stack(scores)
    return float(values.mean()), float(values.std(unbiased=False))


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(1)


def _block_rows(n_columns: int, block_size: int | None) -> int:
    return block_size if block_size else max(1, _BLOCK_ELEMENTS // max(n_columns, 1))


def _sq_distances(x: torch.Tensor, x_norms: torch.Tensor, y: torch.Tensor, y_norms: torch.Tensor) -> torch.Tensor:
    return (x_norms[:, None] + y_norms[None, :] - 2 * x @ y.T).clamp_min_(0)


def _knn_radii(x: torch.Tensor, k: int, block_size: int | None) -> torch.Tensor:
    """Squared distance of each row of x to its k-th nearest other row, one block of rows at a time."""
    norms = _sq_norms(x)
    rows = _block_rows(x.shape[0], block_size)
    radii = []
    for start in range(0, x.shape[0], rows):
        d = _sq_distances(x[start : start + rows], norms[start : start + rows], x, norms)
        # The k+1 smallest include the row itself (distance 0 up to rounding); the k-th other neighbour is last.
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """Whether each query lies within the radius of at least one centre (the k-NN manifold of the centres)."""
    q_norms, c_norms = _sq_norms(queries), _sq_norms(centres)
    rows = _block_rows(centres.shape[0], block_size)
    out = []
    for start in range(0, queries.shape[0], rows):
        d = _sq_distances(queries[start : start + rows], q_norms[start : start + rows], centres, c_norms)
        out.append((d <= radii[None, :]).any(1))
    return torch.cat(out)


def precision_recall(
    real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3, block_size: int | None = None
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of generated samples against real ones.

    Each set's manifold is the union of balls around its samples, each ball reaching the sample's k-th nearest
    neighbour in the same set. Precision: the fraction of fake samples inside the real manifold (are the images
    realistic?); recall: the fraction of real samples inside the fake manifold (is the data's variety covered?).
    Distances in float64, ``block_size`` rows at a time (default: blocks of at most 2^24 distances, 128 MiB), so
    50k x 50k never holds its distance matrix. ``k`` must be below each set's size. Returns floats in [0, 1].
    """
    fn = "precision_recall"
    real = _features(fn, "real_feats", real_feats)
    fake = _features(fn, "fake_feats", fake_feats).to(real.device)
    _same_dim(fn, real, fake, ("real_feats", "fake_feats"))
    if not 1 <= k < min(real.shape[0], fake.shape[0]):
        raise ValueError(f"{fn}: k must be between 1 and the smaller set's size - 1 ({real.shape[0]} real and "
                         f"{fake.shape[0]} fake samples), got {k}")
    if block_size is not None and block_size < 1:
        raise ValueError(f"{fn}: block_size must be positive, got {block_size}")
    real_radii = _knn_radii(real, k, block_size)
    fake_radii = _knn_radii(fake, k, block_size)
    precision = _inside(fake, real, real_radii, block_size).double().mean()
    recall = _inside(real, fake, fake_radii, block_size).double().mean()
    return float(precision), float(recall)
