"""fastgan.metrics: scores against independent float64 formulas and closed forms; streaming statistics; errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastgan.metrics import (
    FeatureStats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)


def exact_moments(n: int, mean: torch.Tensor, factor: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """n samples whose sample mean is exactly ``mean`` and unbiased covariance exactly ``factor @ factor.T``."""
    d = mean.shape[0]
    z = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / (n - 1))
    white = torch.linalg.solve_triangular(chol, z.T, upper=False).T  # covariance exactly I
    return white @ factor.T + mean


def test_frechet_distance_of_gaussians_with_known_covariances():
    # Diagonal covariances commute: FD = |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    var_a, var_b = torch.tensor([1.0, 4.0, 9.0, 0.25], dtype=torch.float64), torch.tensor([4.0, 1.0, 9.0, 1.0],
                                                                                          dtype=torch.float64)
    mu_a, mu_b = torch.tensor([0.0, 1, 2, 3], dtype=torch.float64), torch.tensor([1.0, 1, 0, 3], dtype=torch.float64)
    a = exact_moments(200, mu_a, torch.diag(var_a.sqrt()), 0)
    b = exact_moments(300, mu_b, torch.diag(var_b.sqrt()), 1)
    expected = float((mu_a - mu_b).square().sum() + (var_a.sqrt() - var_b.sqrt()).square().sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)
    # Non-commuting 2x2 covariances: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = S_a S_b.
    fa = torch.tensor([[2.0, 0.0], [1.0, 0.5]], dtype=torch.float64)
    fb = torch.tensor([[1.0, 0.3], [-0.7, 1.5]], dtype=torch.float64)
    sa, sb = fa @ fa.T, fb @ fb.T
    m = sa @ sb
    tr_sqrt = math.sqrt(float(m.trace()) + 2 * math.sqrt(float(torch.linalg.det(m))))
    a = exact_moments(50, torch.zeros(2, dtype=torch.float64), fa, 2)
    b = exact_moments(70, torch.tensor([0.5, -1.0], dtype=torch.float64), fb, 3)
    expected = 1.25 + float(sa.trace() + sb.trace()) - 2 * tr_sqrt
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_equals_scipy_sqrtm_where_that_is_well_conditioned():
    scipy_linalg = pytest.importorskip("scipy.linalg", reason="scipy (installed with scikit-learn, the [test] extra)")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 16, generator=g, dtype=torch.float64)
    b = torch.randn(300, 16, generator=g, dtype=torch.float64) * 1.5 + 0.3
    s1, s2 = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    root = scipy_linalg.sqrtm(s1 @ s2)
    root = root.real if np.iscomplexobj(root) else root
    diff = a.mean(0).numpy() - b.mean(0).numpy()
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a.float(), b.float()) == pytest.approx(expected, rel=1e-5)  # float32 input, float64 math


def test_frechet_distance_is_right_for_rank_deficient_covariances():
    # 10 samples in 64 dimensions: rank-9 covariances. tr((S_a S_b)^(1/2)) is the nuclear norm of P_a^T P_b with
    # S = P P^T, P the centred samples / sqrt(n - 1): an independent formula with no matrix square root at all.
    g = torch.Generator().manual_seed(1)
    a = torch.randn(10, 64, generator=g, dtype=torch.float64)
    b = torch.randn(12, 64, generator=g, dtype=torch.float64) * 2 + 1
    pa, pb = (a - a.mean(0)) / math.sqrt(9), (b - b.mean(0)) / math.sqrt(11)
    nuclear = torch.linalg.matrix_norm(pa @ pb.T, "nuc")
    expected = (a.mean(0) - b.mean(0)).square().sum() + pa.square().sum() + pb.square().sum() - 2 * nuclear
    value = frechet_distance(a, b)
    assert value == pytest.approx(float(expected), rel=1e-9)
    assert value == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9 * float(pa.square().sum()))
    assert isinstance(value, float)


def test_feature_stats_stream_and_merge_as_one_pass_numpy_cov():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1000, 8, generator=g, dtype=torch.float64) * 3 + 1e6  # a large offset: no cancellation allowed
    expected_cov, expected_mean = np.cov(x.numpy(), rowvar=False), x.numpy().mean(0)
    streamed = FeatureStats(8)
    for chunk in x.split(97):
        streamed.update(chunk)
    left, right = FeatureStats.of(x[:333]), FeatureStats(8).update(x[333:700]).update(x[700:])
    merged = left.merge(right)
    for stats in (streamed, merged, FeatureStats.from_state_dict(merged.state_dict())):
        assert stats.count == 1000
        np.testing.assert_allclose(stats.mean.numpy(), expected_mean, rtol=1e-14)
        np.testing.assert_allclose(stats.cov.numpy(), expected_cov, rtol=1e-9, atol=1e-9)
    assert frechet_distance(streamed, FeatureStats.of(x)) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(merged, x[:500]) == pytest.approx(frechet_distance(x, x[:500]), rel=1e-9)


def _mmd2_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with (x.y/d + 1)^3, written out as sums over index pairs."""
    m, d = x.shape
    k = lambda u, v: (u @ v / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd_and_seeded():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(30, 5, generator=g, dtype=torch.float64)
    b = torch.randn(30, 5, generator=g, dtype=torch.float64) + 0.5
    # One subset of every sample: the estimate of the whole sets (MMD does not depend on the order of samples).
    mean, std = kernel_inception_distance(a, b, subsets=1, subset_size=30)
    assert mean == pytest.approx(_mmd2_loops(a.numpy(), b.numpy()), rel=1e-10) and std == 0.0
    assert kernel_inception_distance(a, b, 20, 10, seed=7) == kernel_inception_distance(a, b, 20, 10, seed=7)
    assert kernel_inception_distance(a, b, 20, 10, seed=7) != kernel_inception_distance(a, b, 20, 10, seed=8)
    # Unbiased: two samples of one distribution average about 0; a shifted one is clearly positive.
    x = torch.randn(2000, 16, generator=g)
    same_mean, same_std = kernel_inception_distance(x[:1000], x[1000:], 30, 200)
    shifted_mean, _ = kernel_inception_distance(x[:1000], x[1000:] + 0.3, 30, 200)
    assert abs(same_mean) < 3 * same_std / math.sqrt(30) + 1e-3
    assert shifted_mean > 10 * same_std


def test_inception_score_against_its_definition_and_limits():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(60, 7, generator=g, dtype=torch.float64) * 3
    p = torch.softmax(logits, 1).numpy()
    scores = []
    for chunk in np.array_split(p, 3):
        py = chunk.mean(0)
        scores.append(np.exp(np.mean([np.sum(q * np.log(q / py)) for q in chunk])))
    mean, std = inception_score(logits, splits=3)
    assert mean == pytest.approx(np.mean(scores), rel=1e-10) and std == pytest.approx(np.std(scores), rel=1e-8)
    # Every image predicted alike: 1. Confident and uniform over C classes: C.
    assert inception_score(torch.randn(1, 10).repeat(50, 1), 5)[0] == pytest.approx(1.0, abs=1e-12)
    confident = torch.eye(10).repeat(5, 1) * 100
    assert inception_score(confident, 1)[0] == pytest.approx(10.0, rel=1e-9)


def _pr_dense(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Precision/recall from full distance matrices (the definition, no blocking)."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    r_rad = np.sort(dist(real, real), 1)[:, k]
    f_rad = np.sort(dist(fake, fake), 1)[:, k]
    precision = (dist(fake, real) <= r_rad[None, :]).any(1).mean()
    recall = (dist(real, fake) <= f_rad[None, :]).any(1).mean()
    return float(precision), float(recall)


@pytest.mark.parametrize("block_size", [None, 1, 7])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_against_the_dense_definition(block_size, k):
    g = torch.Generator().manual_seed(5)
    real = torch.randn(120, 6, generator=g, dtype=torch.float64)
    fake = torch.randn(90, 6, generator=g, dtype=torch.float64) * 0.7 + 0.4
    expected = _pr_dense(real.numpy(), fake.numpy(), k)
    assert precision_recall(real, fake, k, block_size) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # the case is not trivial


def test_precision_recall_limits():
    g = torch.Generator().manual_seed(6)
    real = torch.randn(200, 4, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    # Ten samples repeated (memorised): realistic, but no variety (the repeats' k-NN radius is 0).
    memorised = real[:10].repeat(20, 1)
    precision, recall = precision_recall(real[100:], memorised)
    assert recall < 0.06


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: frechet_distance(torch.randn(5, 3), torch.randn(5, 4)), "frechet_distance: feature dimensions differ"),
        (lambda: frechet_distance(torch.randn(1, 3), torch.randn(5, 3)), "frechet_distance: feats_a has 1 sample"),
        (lambda: frechet_distance(torch.randn(5), torch.randn(5, 3)), "frechet_distance: feats_a must be 2-D"),
        (lambda: frechet_distance(torch.ones(5, 3).index_fill(0, torch.tensor([2]), float("nan")), torch.randn(5, 3)),
         "frechet_distance: feats_a holds NaN or inf features (in 1 of 5 samples)"),
        (lambda: kernel_inception_distance(torch.randn(5, 3), torch.randn(5, 2), 1, 2),
         "kernel_inception_distance: feature dimensions differ"),
        (lambda: kernel_inception_distance(torch.randn(5, 3), torch.full((6, 3), float("inf")), 1, 2),
         "kernel_inception_distance: feats_b holds NaN or inf"),
        (lambda: kernel_inception_distance(torch.randn(5, 3), torch.randn(6, 3)), "subset_size 1000 must be between"),
        (lambda: inception_score(torch.randn(1, 10)), "inception_score: logits has 1 sample"),
        (lambda: inception_score(torch.randn(5, 10), splits=6), "inception_score: splits must be between 1 and"),
        (lambda: precision_recall(torch.randn(5, 3), torch.randn(5, 2)), "precision_recall: feature dimensions"),
        (lambda: precision_recall(torch.randn(3, 3), torch.randn(5, 3), k=3), "precision_recall: k must be"),
        (lambda: precision_recall(torch.randn(5, 3), torch.randn(5, 3).int()), "precision_recall: fake_feats must be"),
        (lambda: FeatureStats(3).update(torch.randn(4, 2)), "FeatureStats.update: feature dimensions differ"),
        (lambda: FeatureStats(3).merge(FeatureStats(2)), "FeatureStats.merge: feature dimensions differ"),
        (lambda: frechet_distance(FeatureStats(3).update(torch.randn(1, 3)), torch.randn(4, 3)),
         "frechet_distance: feats_a has 1 sample"),
    ],
)
def test_bad_input_gets_a_clear_error_naming_the_function(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)
