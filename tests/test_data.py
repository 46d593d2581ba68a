"""Tests for fastgan.data: datasets built from tiny files in tmp_path, image grids and PNG output."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from fastgan import data
from fastgan.data import datasets as datasets_module
from fastgan.data import download as download_module
from fastgan.data.transforms import (
    convert_channels,
    prepare_image,
    resize,
    resize_center_crop,
)

PIL_Image = pytest.importorskip("PIL.Image", reason="Pillow is needed to build and read test images")

REPO = Path(__file__).resolve().parents[1]
REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


# -- helpers that write tiny datasets ----------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """Encode ``array`` in the IDX format: 0, 0, type code, ndim, big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    payload = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_mnist(folder: Path, prefix: str, n: int, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = mnist_arrays(n, seed)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return images, labels


def write_cifar(folder: Path, per_batch: int = 2, protocol: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write data_batch_1..5 and test_batch in CIFAR's python format; return what each holds."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    written = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data_rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data_rows, b"filenames": []}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = (data_rows, labels)
    return written


def save_png(path: Path, array: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL_Image.fromarray(array).save(path, format=fmt)


def solid(height: int, width: int, value: int, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.full(shape, value, dtype=np.uint8)


def to_byte(value: torch.Tensor | float) -> int:
    """Map a [-1, 1] value back to the uint8 it came from."""
    return round((float(value) + 1.0) * 127.5)


@pytest.fixture(scope="module")
def digits() -> data.DigitsDataset:
    return data.DigitsDataset(image_size=16)


# -- conversions -------------------------------------------------------------------------------------------------


def test_prepare_image_maps_uint8_to_signed_unit_range() -> None:
    image = torch.tensor([[[0, 255], [128, 51]]], dtype=torch.uint8)
    out = prepare_image(image, None, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, image.float() / 127.5 - 1)
    assert out.min() == -1.0 and out.max() == 1.0


def test_convert_channels_grey_rgb_both_ways() -> None:
    grey = torch.rand(1, 4, 5) * 2 - 1
    rgb = convert_channels(grey, 3)
    assert rgb.shape == (3, 4, 5)
    assert torch.equal(rgb[0], rgb[2]) and torch.equal(rgb[1], grey[0])
    colour = torch.zeros(3, 2, 2)
    colour[1] = 1.0  # pure green
    torch.testing.assert_close(convert_channels(colour, 1), torch.full((1, 2, 2), 0.587))
    rgba = torch.cat([colour, torch.ones(1, 2, 2)])
    assert torch.equal(convert_channels(rgba, 3), colour)


def test_resize_keeps_constants_and_antialiases_when_shrinking() -> None:
    constant = torch.full((1, 8, 8), 0.25)
    torch.testing.assert_close(resize(constant, (3, 5)), torch.full((1, 3, 5), 0.25))
    noise = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    small = resize(noise, (4, 4))
    # Antialiasing averages ~16x16 pixels per output (std 0.035 here); plain bilinear samples 2x2 (std 0.29).
    assert small.shape == (1, 4, 4) and small.std() < 0.1


def test_resize_center_crop_takes_the_middle_of_the_long_side() -> None:
    image = torch.full((1, 10, 30), -1.0)
    image[:, :, 10:20] = 1.0
    out = resize_center_crop(image, 10)
    assert out.shape == (1, 10, 10)
    assert torch.equal(out, torch.ones(1, 10, 10))


# -- digits ------------------------------------------------------------------------------------------------------


def test_digits_default_dataset(digits: data.DigitsDataset) -> None:
    assert len(digits) == 1797
    image, label = digits[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32
    assert -1.0 <= image.min() and image.max() <= 1.0 and image.max() > 0
    assert label == 0 and isinstance(label, int)
    assert sorted(set(digits.labels.tolist())) == list(range(10))


def test_digits_pixels_match_sklearn() -> None:
    from sklearn.datasets import load_digits

    native = data.DigitsDataset()
    image, label = native[5]
    expected = np.rint(load_digits().data[5].reshape(8, 8) * 255 / 16) / 127.5 - 1
    assert image.shape == (1, 8, 8) and label == int(load_digits().target[5])
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)


def test_digits_rgb_channels_are_equal() -> None:
    rgb = data.DigitsDataset(image_size=8, channels=3)
    image, _ = rgb[3]
    assert image.shape == (3, 8, 8)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


# -- MNIST IDX ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_mnist_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    images, labels = write_mnist(tmp_path, "train", 5, gz)
    dataset = data.MNISTDataset(tmp_path, split="train")
    assert len(dataset) == 5
    for i in (0, 4):
        image, label = dataset[i]
        assert image.shape == (1, 28, 28)
        assert label == int(labels[i])
        assert to_byte(image[0, 3, 7]) == images[i, 3, 7]
        np.testing.assert_allclose(image[0].numpy(), images[i] / 127.5 - 1, atol=1e-6)


def test_mnist_resize_channels_and_test_split(tmp_path: Path) -> None:
    write_mnist(tmp_path, "t10k", 3, gz=True)
    dataset = data.MNISTDataset(tmp_path, split="test", image_size=32, channels=3)
    image, _ = dataset[2]
    assert image.shape == (3, 32, 32)
    assert -1.0 <= image.min() and image.max() <= 1.0


def test_mnist_accepts_dotted_names_and_raw_subfolder(tmp_path: Path) -> None:
    images, labels = mnist_arrays(2, seed=3)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train-images.idx3-ubyte").write_bytes(idx_bytes(images))
    (raw / "train-labels.idx1-ubyte").write_bytes(idx_bytes(labels))
    dataset = data.MNISTDataset(tmp_path)
    assert dataset[1][1] == int(labels[1])


def test_fashion_mnist_names_itself_in_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST"):
        data.MNISTDataset(tmp_path, fashion=True)


def test_mnist_missing_split_says_the_other_is_present(tmp_path: Path) -> None:
    write_mnist(tmp_path, "train", 2, gz=True)
    with pytest.raises(FileNotFoundError) as info:
        data.MNISTDataset(tmp_path, split="test")
    message = str(info.value)
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert str(tmp_path) in message
    assert "train split is present" in message and "download=True" in message


def test_command_line_datasets_name_flags_not_python_arguments(tmp_path: Path) -> None:
    """Built as ``fastgan train`` builds them (cli=True), the fixes are flags a user can type."""
    write_mnist(tmp_path, "t10k", 2, gz=True)
    with pytest.raises(FileNotFoundError) as info:
        data.make_dataset("mnist", tmp_path, cli=True)
    message = str(info.value)
    assert "use --split test" in message and "Pass --download" in message
    assert "split=" not in message and "download=True" not in message
    with pytest.raises(FileNotFoundError, match="Pass --download") as info:
        data.make_dataset("cifar10", tmp_path, cli=True)
    assert "download=True" not in str(info.value)
    with pytest.raises(ValueError, match="needs --data-root"):
        data.make_dataset("folder", cli=True)


def test_mnist_missing_folder_names_expected_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"MNIST.*train-images-idx3-ubyte.*does not exist"):
        data.MNISTDataset(missing)


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc", "two zero bytes"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 3) + b"abc", "unknown type code"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 3), "truncated inside its header"),
        (idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10], "truncated"),
        (b"\x00\x00", "too short"),
    ],
    ids=["bad-magic", "bad-type", "short-header", "short-data", "tiny"],
)
def test_read_idx_rejects_malformed_files(tmp_path: Path, payload: bytes, match: str) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=match) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 2, 2), np.uint8)))[:-6])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        data.read_idx(path)


def test_read_idx_other_types_roundtrip(tmp_path: Path) -> None:
    values = np.arange(-3, 3, dtype=">i4").reshape(2, 3)
    path = tmp_path / "ints"
    path.write_bytes(idx_bytes(values, code=0x0C))
    out = data.read_idx(path)
    assert out.shape == (2, 3) and out.dtype == np.int32
    np.testing.assert_array_equal(out, values)


def test_mnist_rejects_mismatched_counts_and_wrong_rank(tmp_path: Path) -> None:
    images, labels = mnist_arrays(4, seed=0)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:3], gz=False)
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        data.MNISTDataset(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", images.reshape(4, -1), gz=False)
    with pytest.raises(ValueError, match=r"uint8 images \[N, H, W\]"):
        data.MNISTDataset(tmp_path)


def serve_mnist(source: Path, monkeypatch: pytest.MonkeyPatch, corrupt: str | None = None) -> dict[str, bytes]:
    """Put four gzip IDX files in ``source`` and point the MNIST mirror list at it (a file:// URL)."""
    source.mkdir()
    files = {}
    for prefix, n in (("train", 3), ("t10k", 2)):
        images, labels = mnist_arrays(n, seed=n)
        files[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(images))
        files[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(labels))
    md5s = {name: hashlib.md5(payload).hexdigest() for name, payload in files.items()}
    for name, payload in files.items():
        (source / name).write_bytes(payload + (b"junk" if name == corrupt else b""))
    monkeypatch.setitem(datasets_module._IDX_RESOURCES, "mnist", ((source.as_uri() + "/",), md5s))
    return files


def test_mnist_download_into_cache_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = serve_mnist(tmp_path / "mirror", monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    dataset = data.MNISTDataset(split="test", download=True)
    cache = tmp_path / "home" / ".cache" / "fastgan" / "mnist"
    assert data.default_cache_dir("mnist") == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    assert all((cache / name).read_bytes() == payload for name, payload in files.items())
    assert len(dataset) == 2 and dataset.root == cache
    assert len(data.MNISTDataset(split="train")) == 3  # fetched with the test split, no download needed


def test_mnist_download_rejects_bad_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve_mnist(tmp_path / "mirror", monkeypatch, corrupt="t10k-images-idx3-ubyte.gz")
    target = tmp_path / "cache"
    with pytest.raises(data.DownloadError, match="MD5"):
        data.MNISTDataset(target, split="test", download=True)
    assert not (target / "t10k-images-idx3-ubyte.gz").exists()
    assert not [p for p in target.iterdir() if p.name.endswith(".tmp")]


def test_mnist_download_without_network_says_where_to_put_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", offline)
    target = tmp_path / "cache"
    with pytest.raises(data.DownloadError) as info:
        data.MNISTDataset(target, download=True)
    message = str(info.value)
    assert str(target) in message and "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "network is unreachable" in message
    assert list(target.iterdir()) == []


# -- CIFAR-10 ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("use_parent", [True, False], ids=["parent", "folder"])
def test_cifar_reads_python_batches(tmp_path: Path, use_parent: bool, protocol: int) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar(folder, protocol=protocol)
    train = data.CIFAR10Dataset(tmp_path if use_parent else folder, split="train")
    assert len(train) == 10
    image, label = train[2]  # first image of data_batch_2
    rows, labels = written["data_batch_2"]
    assert image.shape == (3, 32, 32) and label == labels[0]
    # A row is the red plane, then green, then blue, each 32x32 row-major.
    assert to_byte(image[0, 0, 1]) == rows[0, 1]
    assert to_byte(image[1, 2, 3]) == rows[0, 1024 + 2 * 32 + 3]
    assert to_byte(image[2, 31, 31]) == rows[0, 3071]
    test = data.CIFAR10Dataset(folder, split="test", image_size=16, channels=1)
    assert len(test) == 2 and test[1][0].shape == (1, 16, 16) and test.classes[0] == "airplane"


def test_cifar_missing_batch_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError) as info:
        data.CIFAR10Dataset(tmp_path)
    message = str(info.value)
    assert "CIFAR-10" in message and "missing in" in message and "data_batch_3" in message
    assert "data_batch_1" in message and str(folder) in message
    assert len(data.CIFAR10Dataset(tmp_path, split="test")) == 2  # the test split is still complete


def test_cifar_refuses_pickles_that_run_code(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.mkdir, (str(tmp_path / "pwned"),))

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(ValueError, match="not a readable CIFAR python batch"):
        data.CIFAR10Dataset(folder, split="test")
    assert not (tmp_path / "pwned").exists()


def test_cifar_rejects_wrong_shapes(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match=r"uint8 data \[n, 3072\]"):
        data.CIFAR10Dataset(folder, split="test")


def test_cifar_download_extracts_only_batch_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = tmp_path / "staging" / "cifar-10-batches-py"
    write_cifar(staging)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname="cifar-10-batches-py")
        evil = tarfile.TarInfo("../escaped")
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(datasets_module, "_CIFAR_URLS", (mirror.as_uri() + "/",))
    monkeypatch.setattr(datasets_module, "_CIFAR_ARCHIVE", ("cifar-10-python.tar.gz", md5))
    root = tmp_path / "root"
    dataset = data.CIFAR10Dataset(root, split="test", download=True)
    assert len(dataset) == 2
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == sorted(p.name for p in staging.iterdir())
    assert not (tmp_path / "escaped").exists() and not (root / "cifar-10-python.tar.gz").exists()


# -- image folders -----------------------------------------------------------------------------------------------


def test_image_folder_labels_from_sorted_subfolders(tmp_path: Path) -> None:
    save_png(tmp_path / "zebra" / "a.png", solid(12, 12, 10))
    save_png(tmp_path / "cat" / "b.jpg", solid(12, 12, 200), fmt="JPEG")
    save_png(tmp_path / "cat" / "nested" / "c.PNG", solid(12, 12, 90, channels=1))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    dataset = data.ImageFolderDataset(tmp_path, image_size=8)
    assert dataset.classes == ["cat", "zebra"]
    assert [p.relative_to(tmp_path).as_posix() for p in dataset.paths] == [
        "cat/b.jpg",
        "cat/nested/c.PNG",
        "zebra/a.png",
    ]
    assert dataset.labels.tolist() == [0, 0, 1]
    values = [to_byte(dataset[i][0].mean()) for i in range(3)]
    assert abs(values[0] - 200) <= 3  # JPEG is lossy
    assert values[1:] == [90, 10]
    assert all(dataset[i][0].shape == (3, 8, 8) for i in range(3))


def test_image_folder_flat_is_unlabeled_and_crops_centre(tmp_path: Path) -> None:
    wide = solid(10, 30, 0)
    wide[:, 10:20] = 255
    save_png(tmp_path / "wide.png", wide)
    tall = solid(40, 20, 0, channels=1)
    tall[10:30] = 255
    save_png(tmp_path / "tall.png", tall)
    dataset = data.ImageFolderDataset(tmp_path, image_size=10, channels=1)
    assert dataset.labels.tolist() == [-1, -1] and dataset.classes == []
    tall_image, label = dataset[0]
    assert label == -1 and tall_image.shape == (1, 10, 10)
    # 40x20 shrinks to 20x10 and keeps rows 5..14: the white band, with antialiased edges at most.
    assert torch.equal(tall_image[0, 2:8], torch.ones(6, 10))
    assert torch.equal(dataset[1][0], torch.ones(1, 10, 10))  # 10x30: no resize, exact centre crop


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ImageFolder: folder .*missing.* does not exist"):
        data.ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images \(\*\.png, \*\.jpg, \*\.jpeg\) found under"):
        data.ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    broken = data.ImageFolderDataset(tmp_path / "broken")  # files are decoded per item, not at construction
    with pytest.raises(ValueError, match=r"could not decode image file .*x\.png"):
        broken[0]


def test_image_folders_decode_per_item_not_at_construction(tmp_path: Path, monkeypatch) -> None:
    for i in range(3):
        save_png(tmp_path / "flat" / f"{i}.png", solid(6, 6, 40 * i))
    write_unpaired(tmp_path / "pairs", n_a=2, n_b=3)
    decoded = []
    read_image = datasets_module.read_image
    monkeypatch.setattr(datasets_module, "read_image", lambda path, ch: decoded.append(path) or read_image(path, ch))
    folder = data.ImageFolderDataset(tmp_path / "flat", image_size=4)
    unpaired = data.UnpairedDataset(tmp_path / "pairs", 4)
    assert decoded == [] and len(folder) == 3 and len(unpaired) == 3
    assert to_byte(folder[2][0].mean()) == 80 and len(decoded) == 1
    unpaired[1]
    assert len(decoded) == 3  # one A image and one B image


# -- unpaired ----------------------------------------------------------------------------------------------------


def write_unpaired(root: Path, split: str = "train", n_a: int = 3, n_b: int = 7) -> None:
    for i in range(n_a):
        save_png(root / f"{split}A" / f"{i}.png", solid(6, 8, 10 + i))
    for i in range(n_b):
        save_png(root / f"{split}B" / f"{i}.png", solid(8, 6, 100 + i, channels=1))


def b_indices(dataset: data.UnpairedDataset) -> list[int]:
    return [to_byte(dataset[i][1][0, 0, 0]) - 100 for i in range(len(dataset))]


def test_unpaired_pairs_and_length(tmp_path: Path) -> None:
    write_unpaired(tmp_path)
    dataset = data.UnpairedDataset(tmp_path, image_size=4)
    assert len(dataset) == 7
    a, b = dataset[4]
    assert a.shape == (3, 4, 4) and b.shape == (3, 4, 4)
    assert [to_byte(dataset[i][0][0, 0, 0]) for i in range(7)] == [10, 11, 12, 10, 11, 12, 10]
    assert all(0 <= j < 7 for j in b_indices(dataset))
    assert dataset[-1][0].shape == (3, 4, 4)
    with pytest.raises(IndexError):
        dataset[7]


def test_unpaired_pairing_is_deterministic_per_seed_and_epoch(tmp_path: Path) -> None:
    write_unpaired(tmp_path)
    first = data.UnpairedDataset(tmp_path, 4, seed=3)
    again = data.UnpairedDataset(tmp_path, 4, seed=3)
    other = data.UnpairedDataset(tmp_path, 4, seed=4)
    assert b_indices(first) == b_indices(again)
    backwards = [to_byte(first[i][1][0, 0, 0]) - 100 for i in reversed(range(7))]
    assert backwards[::-1] == b_indices(first)  # an item does not depend on the order of access
    assert b_indices(first) != b_indices(other)
    epoch0 = b_indices(first)
    first.set_epoch(1)
    assert b_indices(first) != epoch0
    first.set_epoch(0)
    assert b_indices(first) == epoch0


def test_unpaired_train_split_is_augmented_like_cyclegan(tmp_path: Path) -> None:
    """Resize to 286/256 of the size, random crop, random horizontal flip; drawn per (seed, epoch); none for test."""
    ramp = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))  # dark left, bright right
    for split in ("train", "test"):
        for i in range(8):
            save_png(tmp_path / f"{split}A" / f"{i}.png", ramp)
            save_png(tmp_path / f"{split}B" / f"{i}.png", ramp)
    train = data.UnpairedDataset(tmp_path, 8, seed=1)
    assert train.augment and train.load_size == 9
    flipped = [bool(train[i][0][0, 0, 0] > train[i][0][0, 0, -1]) for i in range(8)]
    assert 0 < sum(flipped) < 8  # some flipped, some not
    again = data.UnpairedDataset(tmp_path, 8, seed=1)
    assert all(torch.equal(train[i][k], again[i][k]) for i in range(8) for k in range(2))
    train.set_epoch(1)
    assert any(not torch.equal(train[i][0], again[i][0]) for i in range(8))  # new draws each epoch
    plain = data.UnpairedDataset(tmp_path, 8, split="test")
    assert not plain.augment
    centre = data.ImageFolderDataset(tmp_path / "testA", image_size=8)[0][0]
    assert all(torch.equal(plain[i][0], centre) for i in range(8))  # resized and centre-cropped only
    assert torch.equal(train.domain_a(2)[1], centre)  # fixed sample inputs are never augmented


def test_digit_styles_are_two_unpaired_styles_of_the_bundled_digits() -> None:
    styles = data.make_dataset("digit-styles", image_size=32, seed=0)
    assert isinstance(styles, data.DigitStylesDataset) and styles.counts == (899, 898) and len(styles) == 899
    a, b = styles[5]
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32
    # A: light strokes on a dark ground; B: the inverse (thick dark strokes on a light ground).
    plain = data.DigitStylesDataset(32, augment=False)
    assert all(plain[i][0].mean() < 0 < plain[i][1].mean() for i in range(20))
    assert torch.equal(plain[0][0], plain.domain_a(3)[0]) and plain.domain_a(3).shape == (3, 3, 32, 32)


def test_unpaired_missing_domain_is_named(tmp_path: Path) -> None:
    write_unpaired(tmp_path, split="train")
    with pytest.raises(FileNotFoundError) as info:
        data.UnpairedDataset(tmp_path, 4, split="test")
    message = str(info.value)
    assert "testA/" in message and "testB/" in message and "missing: testA, testB" in message
    assert "trainA" in message  # lists what is there


# -- factory -----------------------------------------------------------------------------------------------------


def test_make_dataset_builds_each_kind(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist", "train", 2, gz=True)
    write_cifar(tmp_path / "cifar" / "cifar-10-batches-py")
    write_unpaired(tmp_path / "horse2zebra")
    built = {
        "digits": data.make_dataset("digits", image_size=8),
        "mnist": data.make_dataset("MNIST", tmp_path / "mnist", image_size=8),
        "fashion-mnist": data.make_dataset("fashion_mnist", tmp_path / "mnist", image_size=8),
        "cifar10": data.make_dataset("cifar10", tmp_path / "cifar", image_size=8),
        "folder": data.make_dataset("folder", tmp_path / "horse2zebra", image_size=8),
        "unpaired": data.make_dataset("unpaired", tmp_path / "horse2zebra", image_size=8, seed=1),
        "digit-styles": data.make_dataset("digit-styles", image_size=8),
    }
    assert set(built) == set(data.DATASETS)
    for name, dataset in built.items():
        item = dataset[0]
        image = item[0]
        assert image.shape == (data.default_channels(name), 8, 8), name
    assert isinstance(built["fashion-mnist"], data.MNISTDataset) and "Trouser" in built["fashion-mnist"].classes
    assert built["folder"].classes == ["trainA", "trainB"]
    assert isinstance(built["unpaired"][0][1], torch.Tensor) and isinstance(built["digit-styles"][0][1], torch.Tensor)


def test_make_dataset_rejects_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="digits, mnist, fashion-mnist, cifar10, folder, unpaired"):
        data.make_dataset("imagenet")
    with pytest.raises(ValueError, match="valid names"):
        data.default_channels("svhn")
    with pytest.raises(ValueError, match="needs root="):
        data.make_dataset("folder")
    with pytest.raises(ValueError, match="cannot be downloaded"):
        data.make_dataset("unpaired", tmp_path, download=True)
    with pytest.raises(ValueError, match="split must be one of"):
        data.make_dataset("digits", split="val")
    with pytest.raises(ValueError, match="channels must be 1, 3 or None"):
        data.make_dataset("digits", channels=2)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        data.make_dataset("digits", image_size=0)


# -- grids and PNG files -----------------------------------------------------------------------------------------


def constant_batch(values: list[float], channels: int = 3, height: int = 2, width: int = 3) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, channels, height, width).clone()


def test_make_grid_layout() -> None:
    images = constant_batch([-1.0, 1.0, 0.0, 0.5, -0.5])
    grid = data.make_grid(images, nrow=3, padding=1)
    assert grid.dtype == torch.uint8 and grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3)
    expected = [0, 255, 128, 191, 64]  # round((v + 1) * 127.5)
    for k, value in enumerate(expected):
        top, left = 1 + (k // 3) * 3, 1 + (k % 3) * 4
        assert torch.all(grid[top : top + 2, left : left + 3] == value), k
    assert torch.all(grid[0] == 0) and torch.all(grid[:, 0] == 0)  # padding
    assert torch.all(grid[4:6, 9:12] == 0)  # the unused sixth cell
    assert grid[1, 5, 0] == 255 and grid[1, 4, 0] == 0  # image 1 starts right after one pixel of padding


def test_make_grid_defaults_and_inputs() -> None:
    grid = data.make_grid(constant_batch([1.0] * 10, channels=1, height=4, width=4))
    assert grid.shape == (3 * 6 + 2, 4 * 6 + 2, 1)  # ceil(sqrt(10)) = 4 per row, 3 rows, padding 2
    single = data.make_grid(torch.zeros(3, 5, 5, dtype=torch.uint8) + 7, padding=0)
    assert single.shape == (5, 5, 3) and torch.all(single == 7)
    from_list = data.make_grid([torch.ones(1, 2, 2), -torch.ones(1, 2, 2)], nrow=1, padding=0, value_range=(-1, 1))
    assert from_list[:, :, 0].tolist() == [[255, 255], [255, 255], [0, 0], [0, 0]]
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        data.make_grid(torch.zeros(2, 2, 4, 4))


def test_to_uint8_hwc() -> None:
    images = torch.linspace(-1, 1, 2 * 3 * 4 * 5).view(2, 3, 4, 5)
    out = data.to_uint8_hwc(images)
    assert out.shape == (2, 4, 5, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out[0, 0, 0, 0] == 0 and out[1, 3, 4, 2] == 255
    assert out[1, 2, 1, 0] == round((float(images[1, 0, 2, 1]) + 1) * 127.5)
    clamped = data.to_uint8_hwc(torch.tensor([[[[5.0, -5.0]]]]))
    assert clamped.tolist() == [[[[255], [0]]]]
    unit = data.to_uint8_hwc(torch.full((1, 1, 1, 1), 0.5), value_range=(0, 1))
    assert unit.item() == 128


def test_save_image_grid_writes_png_atomically(tmp_path: Path) -> None:
    images = torch.rand(5, 3, 6, 6) * 2 - 1
    path = data.save_image_grid(images, tmp_path / "out" / "grid.png", nrow=2)
    assert path == tmp_path / "out" / "grid.png"
    assert os.listdir(tmp_path / "out") == ["grid.png"]
    with PIL_Image.open(path) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        decoded = np.asarray(picture)
    np.testing.assert_array_equal(decoded, data.make_grid(images, nrow=2).numpy())


def test_save_image_grid_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data.save_image_grid(torch.zeros(1, 1, 4, 4), tmp_path / "grid.png")
    before = (tmp_path / "grid.png").read_bytes()

    def broken_save(self: object, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(PIL_Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        data.save_image_grid(torch.ones(1, 1, 4, 4), tmp_path / "grid.png")
    assert os.listdir(tmp_path) == ["grid.png"]
    assert (tmp_path / "grid.png").read_bytes() == before  # the old file is untouched


def test_save_images_one_png_per_image(tmp_path: Path) -> None:
    images = constant_batch([-1.0, 0.0, 1.0], channels=1, height=3, width=4)
    paths = data.save_images(images, tmp_path / "samples", start=10)
    assert [p.name for p in paths] == ["000010.png", "000011.png", "000012.png"]
    assert sorted(os.listdir(tmp_path / "samples")) == ["000010.png", "000011.png", "000012.png"]
    decoded = [data.read_image(p, channels=1) for p in paths]
    assert [int(d[0, 0, 0]) for d in decoded] == [0, 128, 255]
    assert all(d.shape == (1, 3, 4) and d.dtype == torch.uint8 for d in decoded)


def test_import_works_without_pillow_and_errors_name_it() -> None:
    code = (
        "import sys; sys.modules['PIL'] = None\n"
        "import torch, fastgan.data as d\n"
        "try:\n"
        "    d.save_image_grid(torch.zeros(1, 1, 2, 2), 'never.png')\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert "pip install pillow" in result.stdout


# -- the real MNIST test files -----------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"real MNIST files not found at {REAL_MNIST}")
def test_real_mnist_t10k() -> None:
    dataset = data.MNISTDataset(REAL_MNIST, split="test", image_size=32)
    assert len(dataset) == 10000
    assert np.bincount(dataset.labels.numpy(), minlength=10).tolist()[:2] == [980, 1135]
    image, label = dataset[0]
    assert label == 7 and image.shape == (1, 32, 32)
    assert image.min() == -1.0 and image.max() <= 1.0 and image.max() > 0.9
    with pytest.raises(FileNotFoundError, match="test split is present"):
        data.MNISTDataset(REAL_MNIST, split="train")
