"""Feature networks of fastgan.metrics: FID's InceptionV3 (architecture, names, preprocessing, weights file) and the
LeNet digit features (training, atomic cache). Parity with torch-fidelity runs when the weights file is present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastgan.metrics import FIDInceptionV3, InceptionWeightsError, frechet_distance, load_inception
from fastgan.metrics import inception as inception_module
from fastgan.metrics.inception import resize_bilinear_tf1, to_inception_input
from fastgan.metrics.lenet import LeNetFeatures, cached_lenet

# torchvision's inception_v3 has 27,161,264 parameters (its documented count); the FID network drops the auxiliary
# classifier (768 -> 128 1x1 conv + BN: 98,560; 128 -> 768 5x5 conv + BN: 2,459,136; fc 768 -> 1000: 769,000) and
# has 1008 classes instead of 1000 (8 more rows of 2048 weights and a bias).
FID_INCEPTION_PARAMETERS = 27_161_264 - (98_560 + 2_459_136 + 769_000) + 8 * 2049


@pytest.fixture(scope="module")
def net() -> FIDInceptionV3:
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_inception_has_the_fid_networks_parameters_and_key_names(net):
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == FID_INCEPTION_PARAMETERS
    shapes = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6b.branch7x7dbl_5.conv.weight": (192, 128, 1, 7),
        "Mixed_6e.branch7x7_2.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    prefixes = {key.split(".")[0] for key in state}
    assert prefixes == {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                        *(f"Mixed_{b}" for b in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")),
                        "fc"}
    # Every conv is BasicConv2d's conv (no bias) + bn (eps 1e-3), and its keys say so.
    assert all(k.endswith(("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                           "bn.num_batches_tracked")) for k in state if not k.startswith("fc."))
    assert all(m.eps == 1e-3 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_inception_outputs_pool3_and_unbiased_logits(net):
    images = torch.rand(2, 1, 28, 28) * 2 - 1
    pool3, logits = net.features(images)
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008) and pool3.dtype == torch.float32
    assert (pool3 >= 0).all()  # a mean of ReLU outputs
    torch.testing.assert_close(logits, pool3 @ net.fc.weight.T, rtol=1e-5, atol=1e-5)  # no bias: torch-fidelity's IS


def _tf1_resize_loops(x: np.ndarray, size: int) -> np.ndarray:
    """TensorFlow 1's resize_bilinear (align_corners=False), one output pixel at a time."""
    h, w = x.shape
    out = np.empty((size, size))
    for i in range(size):
        sy = i * h / size
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(size):
            sx = j * w / size
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = x[y0, x0] + (x[y0, x1] - x[y0, x0]) * fx
            bottom = x[y1, x0] + (x[y1, x1] - x[y1, x0]) * fx
            out[i, j] = top + (bottom - top) * fy
    return out


def test_resize_is_tensorflow1_bilinear_not_torch_interpolate():
    x = torch.rand(1, 1, 5, 7, dtype=torch.float64) * 255
    out = resize_bilinear_tf1(x, 13)
    np.testing.assert_allclose(out[0, 0].numpy(), _tf1_resize_loops(x[0, 0].numpy(), 13), rtol=0, atol=1e-4)
    torch_resize = F.interpolate(x, size=(13, 13), mode="bilinear", align_corners=False)
    assert (out - torch_resize).abs().max() > 1  # a different function: no half-pixel offset
    # Doubling: even outputs are the inputs, odd ones the mean of two neighbours, the last repeats the border.
    d = resize_bilinear_tf1(x[..., :4, :4], 8)[0, 0]
    torch.testing.assert_close(d[::2, ::2], x[0, 0, :4, :4])
    torch.testing.assert_close(d[0, 1], (x[0, 0, 0, 0] + x[0, 0, 0, 1]) / 2)
    torch.testing.assert_close(d[0, 7], x[0, 0, 0, 3])


def test_inception_input_quantises_repeats_grey_and_scales_like_torch_fidelity():
    images = torch.tensor([-1.0, 1.0, 0.0, 0.5]).view(1, 1, 2, 2)
    x = to_inception_input(images)
    assert x.shape == (1, 3, 299, 299)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    # uint8 values 0, 255, 128 (127.5 rounded half to even), 191; first pixel (0 - 128) / 128.
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 0, 298] == (255 - 128) / 128 and x[0, 0, 298, 0] == 0.0
    assert x.min() >= -1 and x.max() <= 127 / 128
    with pytest.raises(ValueError, match="inception features: images must be"):
        to_inception_input(torch.zeros(1, 2, 8, 8))


def test_missing_weights_name_the_file_the_checksum_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv(inception_module.ENV_WEIGHTS, raising=False)
    with pytest.raises(InceptionWeightsError) as info:
        load_inception(tmp_path / "pt_inception.pth")
    message = str(info.value)
    assert str(tmp_path / "pt_inception.pth") in message and "does not exist" in message
    assert "6726825d" in message and "weights-inception-2015-12-05-6726825d.pth" in message
    assert "--inception-weights" in message and "FASTGAN_INCEPTION_WEIGHTS" in message and "never downloads" in message
    with pytest.raises(InceptionWeightsError, match="no Inception weights file given"):
        load_inception(None)
    monkeypatch.setenv(inception_module.ENV_WEIGHTS, str(tmp_path / "env.pth"))
    with pytest.raises(InceptionWeightsError, match="env.pth does not exist"):
        load_inception(None)


def test_a_state_dict_loads_by_the_published_names_and_a_wrong_file_is_refused(net, tmp_path):
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    file = tmp_path / "weights.pth"
    torch.save(state, file)
    loaded = load_inception(file, check_hash=False)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(InceptionWeightsError, match="SHA-256 begins .*, not 6726825d"):
        load_inception(file)
    torch.save({"conv.weight": torch.zeros(1)}, file)
    with pytest.raises(ValueError, match="not an FID Inception state_dict"):
        load_inception(file, check_hash=False)


def test_fid_equals_torch_fidelity_with_the_published_weights():
    path = os.environ.get(inception_module.ENV_WEIGHTS)
    if not path or not Path(path).is_file():
        pytest.skip(f"needs the FID Inception weights: set ${inception_module.ENV_WEIGHTS} to "
                    "weights-inception-2015-12-05-6726825d.pth")
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3",
                                   reason="torch-fidelity is not installed")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 3, 32, 32, generator=g) * 2 - 1
    b = (torch.rand(40, 3, 32, 32, generator=g) * 2 - 1).clamp(-0.5, 1)
    ours = load_inception(path)
    theirs = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=path)

    def fidelity_features(x):
        return theirs(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))[0].double()

    expected = frechet_distance(fidelity_features(a), fidelity_features(b))
    assert frechet_distance(ours.features(a)[0], ours.features(b)[0]) == pytest.approx(expected, rel=1e-4)


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 images of ten easy classes: a bright square at one of ten places, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.rand(n, 1, 28, 28, generator=g) * 0.4 - 1
    for i, c in enumerate(labels.tolist()):
        row, col = 2 + 12 * (c // 5), 2 + 5 * (c % 5)
        images[i, 0, row : row + 10, col : col + 4] = 1
    return images, labels


def test_lenet_trains_caches_atomically_and_reloads_the_same_network(tmp_path):
    train, held_out = _blobs(320, 0), _blobs(100, 1)
    net, accuracy, file, trained = cached_lenet(train, held_out, tmp_path, epochs=2)
    assert trained and file.is_file() and file.parent == tmp_path
    assert accuracy >= 0.9  # ten trivially separable classes
    assert [p.name for p in tmp_path.iterdir()] == [file.name]  # no temporary file left behind
    again, accuracy_again, file_again, trained_again = cached_lenet(train, held_out, tmp_path, epochs=2)
    assert not trained_again and file_again == file and accuracy_again == accuracy
    feats, logits = again.features(held_out[0])
    assert feats.shape == (100, 128) and logits.shape == (100, 10)
    torch.testing.assert_close(feats, net.features(held_out[0])[0], rtol=0, atol=0)
    # Other training data: another network, another file.
    other = cached_lenet(_blobs(320, 5), held_out, tmp_path, epochs=2)
    assert other[3] and other[2] != file
    # A damaged cache entry is retrained and replaced, not a crash.
    file.write_bytes(b"garbage")
    assert cached_lenet(train, held_out, tmp_path, epochs=2)[3]
    with pytest.raises(ValueError, match="LeNet features: images must be"):
        LeNetFeatures().features(torch.zeros(2, 1, 32, 32))


def test_quality_benchmark_compares_the_default_dcgan_with_a_recipe_of_the_same_layout(tmp_path):
    """benchmarks/quality_mnist.py: the plain recipe has the default 28x28 DCGAN's convolution shapes, and a
    two-step run scores all three generators (fastgan raw and EMA, the recipe) and times both steps."""
    from benchmarks import quality_mnist
    from fastgan.models import build_networks

    nets = build_networks("dcgan", 28, 1, z_dim=quality_mnist.Z_DIM, impl="ref")

    def conv_shapes(module):
        return [tuple(m.weight.shape) for m in module.modules() if getattr(m, "weight", None) is not None
                and m.weight.dim() == 4]

    g, d = quality_mnist.recipe_networks()
    assert conv_shapes(g) == conv_shapes(nets["G"]) and conv_shapes(d) == conv_shapes(nets["D"])
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not any(root.glob("t10k-images*")):
        pytest.skip(f"MNIST test files (t10k-images-idx3-ubyte[.gz]) not in {root}")
    result = quality_mnist.compare(root, steps=2, seed=0, num=100, out=tmp_path, impl="ref")
    assert set(result["scores"]) == {"fastgan", "fastgan (EMA)", "recipe"}
    for scores in result["scores"].values():
        assert scores["lenet_fid"] > 0 and 0 <= scores["precision"] <= 1 and 0 <= scores["recall"] <= 1
    assert all(ms > 0 for ms in result["step_ms_median"].values()) and result["lenet_accuracy"] > 0.9
