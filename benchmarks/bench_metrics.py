"""FID with LeNet features for 10k 28x28 samples: fastgan.metrics beside pytorch-fid's recipe, same features.

One call: the LeNet features of 10,000 images (``LeNetFeatures.features``, batches of 1000) and their Frechet
distance to a reference's precomputed statistics (10,000 other images). ``fastgan``: ``FeatureStats`` (float64) and
``frechet_distance`` (eigen-decomposition square root); ``scipy``: pytorch-fid's formula (numpy mean/cov,
``scipy.linalg.sqrtm`` of the covariance product). Goal on the project's 2-core CPU (measured, not asserted): under
10 s. Random weights and images: the work is that of a trained network on real digits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastgan.metrics import FeatureStats, LeNetFeatures, frechet_distance

N = 10_000


def _scipy_fid(mu1: np.ndarray, sigma1: np.ndarray, feats: np.ndarray) -> float:
    from scipy import linalg

    mu2, sigma2 = feats.mean(0), np.cov(feats, rowvar=False)
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


@pytest.fixture(scope="module")
def lenet_setup():
    torch.manual_seed(0)
    net = LeNetFeatures().eval()
    images = torch.rand(N, 1, 28, 28) * 2 - 1
    reference = net.features(torch.rand(N, 1, 28, 28) * 2 - 1)[0]
    return net, images, reference


@pytest.mark.parametrize("provider", ["fastgan", "scipy"])
def test_lenet_fid_10k(benchmark, provider, lenet_setup):
    net, images, reference = lenet_setup
    if provider == "fastgan":
        stats = FeatureStats.of(reference)

        def run():
            return frechet_distance(stats, net.features(images)[0])
    else:
        pytest.importorskip("scipy")
        ref = reference.double().numpy()
        mu1, sigma1 = ref.mean(0), np.cov(ref, rowvar=False)

        def run():
            return _scipy_fid(mu1, sigma1, net.features(images)[0].double().numpy())

    benchmark.group = "lenet-fid-10k"
    benchmark.extra_info.update(samples=N, threads=torch.get_num_threads(), provider=provider)
    value = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert np.isfinite(value)
