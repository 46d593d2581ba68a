"""Image datasets for GAN training, without torchvision.

The fixed-size datasets (digits, MNIST, CIFAR-10) read their files once into a uint8 tensor [N, C, H, W] (small:
MNIST's 60k images are 47 MB); image folders list their files and decode one image per item, so DataLoader workers
decode them in parallel (``fastgan.train`` does). Every item is what training wants: a float32 tensor [channels,
image_size, image_size] in [-1, 1] (the range of a tanh generator) and an int label (-1 where the data has none), or
an ``(a, b)`` pair for CycleGAN's two domains. Resizing is bilinear, antialiased when shrinking
(``torch.nn.functional.interpolate``); grey and RGB convert both ways.

A missing or malformed dataset raises FileNotFoundError / ValueError naming the dataset and saying which files
were expected where; with ``cli=True`` (as ``fastgan train`` builds them) the fixes name command-line flags
(``--download``, ``--split``, ``--data-root``) instead of Python arguments.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._io import atomic_writer
from .download import DownloadError, default_cache_dir, download_file
from .idx import read_idx
from .images import read_image
from .transforms import (
    crop,
    float_to_uint8,
    prepare_image,
    resize_center_crop,
    resize_short_side,
    to_signed_unit,
)

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "folder", "unpaired", "digit-styles")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_DEFAULT_CHANNELS = {"digits": 1, "mnist": 1, "fashion-mnist": 1, "cifar10": 3, "folder": 3, "unpaired": 3,
                     "digit-styles": 3}
_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "imagefolder": "folder", "cyclegan": "unpaired"}
_SPLITS = ("train", "test")
Root = str | os.PathLike[str]
# CycleGAN's augmentation (Zhu et al.'s code): resize to 286 for 256-pixel crops, random crop, horizontal flip.
_CYCLEGAN_LOAD_RATIO = 286 / 256


def _say(cli: bool, python: str, flag: str) -> str:
    """How an error message names an argument: as the Python argument, or as the command-line flag when ``cli``."""
    return flag if cli else python


def _canonical_name(name: str) -> str:
    """Normalise a dataset name ('Fashion_MNIST' -> 'fashion-mnist'); raise ValueError listing valid names."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def default_channels(name: str) -> int:
    """Channels a dataset has natively: 1 for digits, mnist, fashion-mnist; 3 for cifar10, folder, unpaired and
    digit-styles."""
    return _DEFAULT_CHANNELS[_canonical_name(name)]


def _check_options(dataset: str, split: str, image_size: int | None, channels: int | None) -> None:
    """Validate the arguments every dataset shares, naming the dataset in the error."""
    if split not in _SPLITS:
        raise ValueError(f"{dataset}: split must be one of {_SPLITS}, got {split!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"{dataset}: image_size must be a positive int or None, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"{dataset}: channels must be 1, 3 or None, got {channels!r}")


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """Images held as uint8 [N, C, H, W] with int64 labels [N]; item ``i`` is ``(image, label)``.

    ``image`` is float32 [channels, image_size, image_size] in [-1, 1] (``image_size=None`` keeps the stored
    size); ``label`` is an int, -1 for unlabeled data. Subclasses only load files.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        image_size: int | None = None,
        channels: int | None = None,
        classes: Sequence[str] = (),
        root: Path | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"{type(self).__name__}: expected uint8 images [N, C, H, W] and labels [N], "
                f"got {images.dtype} {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.to(torch.int64)
        self.image_size = image_size
        self.channels = channels if channels is not None else images.shape[1]
        self.classes = list(classes)
        self.root = root

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return prepare_image(self.images[index], self.image_size, self.channels), int(self.labels[index])

    def __repr__(self) -> str:
        size = self.image_size if self.image_size is not None else tuple(self.images.shape[-2:])
        where = f", root='{self.root}'" if self.root is not None else ""
        return f"{type(self).__name__}(n={len(self)}, image_size={size}, channels={self.channels}{where})"


class DigitsDataset(ImageDataset):
    """The 1797 8x8 handwritten digits bundled with scikit-learn: no download, no files; labels 0..9.

    The default dataset: enough to smoke-test a GAN anywhere. Pixel values 0..16 are scaled to 0..255 and the
    images upsampled to ``image_size``. There is no train/test split; ``split`` is accepted for uniformity.
    """

    def __init__(self, image_size: int | None = None, channels: int | None = None, split: str = "train") -> None:
        _check_options("digits", split, image_size, channels)
        images, labels = _load_digits("DigitsDataset")
        super().__init__(images, labels, image_size, channels, classes=[str(d) for d in range(10)])


def _load_digits(owner: str) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as uint8 images [1797, 1, 8, 8] (0..16 scaled to 0..255) and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(f"{owner} needs scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    pixels = np.rint(np.asarray(bunch.data, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return torch.from_numpy(pixels).reshape(-1, 1, 8, 8), torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))


# -- MNIST / Fashion-MNIST ---------------------------------------------------------------------------------------

_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IDX_RESOURCES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "mnist": (
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": (
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}
_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _idx_file(directories: Sequence[Path], prefix: str, kind: str) -> Path | None:
    """First existing spelling of ``<prefix>-<kind>-ubyte`` (also ``.gz`` and ``<prefix>-images.idx3-ubyte``)."""
    what, idx = kind.split("-")
    stems = (f"{prefix}-{kind}-ubyte", f"{prefix}-{what}.{idx}-ubyte")
    for directory in directories:
        for stem in stems:
            for name in (stem, stem + ".gz"):
                if (directory / name).is_file():
                    return directory / name
    return None


class MNISTDataset(ImageDataset):
    """MNIST or Fashion-MNIST (``fashion=True``) from IDX files: 28x28 grey, labels 0..9.

    Files (gzip or raw, standard names): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` for
    ``split="train"`` and ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` for ``split="test"``, in
    ``root`` (also found in ``root/raw`` and torchvision's ``root/MNIST/raw``). ``root=None`` means
    ``~/.cache/fastgan/mnist`` (or ``fashion-mnist``). ``download=True`` fetches missing files into ``root``
    (MD5-checked, written atomically).
    """

    def __init__(
        self,
        root: Root | None = None,
        split: str = "train",
        fashion: bool = False,
        image_size: int | None = None,
        channels: int | None = None,
        download: bool = False,
        *,
        cli: bool = False,
    ) -> None:
        self.name = "Fashion-MNIST" if fashion else "MNIST"
        self.cli = cli
        self._key = "fashion-mnist" if fashion else "mnist"
        _check_options(self.name, split, image_size, channels)
        folder = Path(root).expanduser() if root is not None else default_cache_dir(self._key)
        self.split = split
        files = self._find(folder, split)
        if files is None and download:
            self._download(folder)
            files = self._find(folder, split)
        if files is None:
            raise FileNotFoundError(self._missing_message(folder, split, download))
        images, labels = self._load(*files)
        classes = _FASHION_CLASSES if fashion else [str(d) for d in range(10)]
        super().__init__(images, labels, image_size, channels, classes=classes, root=folder)

    def _directories(self, folder: Path) -> list[Path]:
        """Folders searched for the files, most specific last."""
        torchvision_raw = folder / ("FashionMNIST" if self._key == "fashion-mnist" else "MNIST") / "raw"
        return [folder, folder / "raw", torchvision_raw]

    def _find(self, folder: Path, split: str) -> tuple[Path, Path] | None:
        """Paths of the images and labels files of ``split``, or None if either is missing."""
        directories = self._directories(folder)
        images = _idx_file(directories, _IDX_PREFIX[split], "images-idx3")
        labels = _idx_file(directories, _IDX_PREFIX[split], "labels-idx1")
        return (images, labels) if images is not None and labels is not None else None

    def _missing_message(self, folder: Path, split: str, download: bool) -> str:
        """Say which files were expected where, whether the other split is there, and how to get them."""
        prefix = _IDX_PREFIX[split]
        message = (
            f"{self.name}: the {split} split was not found: expected {prefix}-images-idx3-ubyte and "
            f"{prefix}-labels-idx1-ubyte (optionally .gz) in {folder}"
        )
        if not folder.is_dir():
            message += f" (the folder {folder} does not exist)"
        other = "test" if split == "train" else "train"
        present = self._find(folder, other)
        if present is not None:
            message += (
                f". The {other} split is present there ({present[0].name}, {present[1].name}): "
                f"use {_say(self.cli, f'split={other!r}', f'--split {other}')} or add the {split} files"
            )
        if not download:
            message += f". Pass {_say(self.cli, 'download=True', '--download')} to fetch them into {folder}"
        return message + "."

    def _download(self, folder: Path) -> None:
        """Fetch every missing file of both splits; on failure say where to put the files by hand."""
        mirrors, md5s = _IDX_RESOURCES[self._key]
        directories = self._directories(folder)
        for filename, md5 in md5s.items():
            prefix, kind = filename.split("-", 1)
            if _idx_file(directories, prefix, kind.removesuffix("-ubyte.gz")) is not None:
                continue
            try:
                download_file(mirrors, filename, folder, md5)
            except DownloadError as err:
                raise DownloadError(
                    f"{self.name}: download failed (no network?). Put the four files {', '.join(md5s)} "
                    f"(gzip or uncompressed) into {folder} yourself, or pass {_say(self.cli, 'root=', '--data-root')} "
                    f"a folder that has them. {err}"
                ) from err

    def _load(self, images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
        """Read and cross-check the two IDX files."""
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(
                f"{self.name}: {images_path} should hold uint8 images [N, H, W], got {images.dtype} {images.shape}"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(
                f"{self.name}: {labels_path} should hold uint8 labels [N], got {labels.dtype} {labels.shape}"
            )
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{self.name}: {images_path.name} holds {images.shape[0]} images but {labels_path.name} "
                f"holds {labels.shape[0]} labels"
            )
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


# -- CIFAR-10 ----------------------------------------------------------------------------------------------------

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_URLS = ("https://www.cs.toronto.edu/~kriz/",)
_CIFAR_ARCHIVE = ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_NUMPY_CORE = "numpy._core" if importlib.util.find_spec("numpy._core") is not None else "numpy.core"


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that builds only what a CIFAR batch contains (numpy arrays), never arbitrary callables."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1')
        }
    )

    def find_class(self, module: str, name: str) -> object:
        canonical = module.replace("numpy._core", "numpy.core", 1)
        if (canonical, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")
        if canonical.startswith("numpy.core"):
            # Pickles name numpy.core (numpy 1) or numpy._core (numpy 2); load from whichever exists.
            module = canonical.replace("numpy.core", _NUMPY_CORE, 1)
        return super().find_class(module, name)


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: uint8 [n, 3, 32, 32] images and int64 [n] labels."""
    try:
        with open(path, "rb") as handle:
            batch = _CifarUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"CIFAR-10: {path} is not a readable CIFAR python batch: {err}") from err
    items = batch.items() if isinstance(batch, dict) else ()
    batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in items}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(
            f"CIFAR-10: {path} should hold a dict with 'data' and 'labels' (found: {sorted(map(str, batch))})"
        )
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ValueError(
            f"CIFAR-10: {path} should hold uint8 data [n, 3072] and n labels, got {data.dtype} {data.shape} "
            f"and {labels.shape[0] if labels.ndim else 0} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"CIFAR-10: {path} has labels outside 0..9")
    # Each row is the red plane, then green, then blue, each 32x32 row-major.
    return data.reshape(-1, 3, 32, 32), labels


class CIFAR10Dataset(ImageDataset):
    """CIFAR-10 from its python version: 32x32 RGB, labels 0..9 (``classes`` names them).

    ``root`` is the ``cifar-10-batches-py`` folder or its parent; it must hold ``data_batch_1`` ...
    ``data_batch_5`` for ``split="train"`` and ``test_batch`` for ``split="test"``. ``root=None`` means
    ``~/.cache/fastgan/cifar10``. ``download=True`` fetches and extracts cifar-10-python.tar.gz (170 MB).
    The batches are pickles; they are read with an unpickler that only rebuilds numpy arrays.
    """

    def __init__(
        self,
        root: Root | None = None,
        split: str = "train",
        image_size: int | None = None,
        channels: int | None = None,
        download: bool = False,
        *,
        cli: bool = False,
    ) -> None:
        _check_options("CIFAR-10", split, image_size, channels)
        base = Path(root).expanduser() if root is not None else default_cache_dir("cifar10")
        folder = self._find(base, split)
        if folder is None and download:
            self._download(base, cli)
            folder = self._find(base, split)
        if folder is None:
            raise FileNotFoundError(self._missing_message(base, split, download, cli))
        batches = [_load_cifar_batch(folder / name) for name in _CIFAR_FILES[split]]
        images = torch.from_numpy(np.concatenate([b[0] for b in batches]))
        labels = torch.from_numpy(np.concatenate([b[1] for b in batches]))
        self.split = split
        super().__init__(images, labels, image_size, channels, classes=_CIFAR_CLASSES, root=folder)

    @staticmethod
    def _find(base: Path, split: str) -> Path | None:
        """``base`` or ``base/cifar-10-batches-py``, whichever holds every file of ``split``."""
        for folder in (base, base / _CIFAR_FOLDER):
            if all((folder / name).is_file() for name in _CIFAR_FILES[split]):
                return folder
        return None

    @staticmethod
    def _missing_message(base: Path, split: str, download: bool, cli: bool) -> str:
        """Name the files expected, the folders searched, and which files are missing."""
        expected = _CIFAR_FILES[split]
        folder = base if (base / expected[0]).exists() or not (base / _CIFAR_FOLDER).is_dir() else base / _CIFAR_FOLDER
        missing = [name for name in expected if not (folder / name).is_file()]
        message = (
            f"CIFAR-10: the {split} split needs {', '.join(expected)} (the python version, cifar-10-python.tar.gz "
            f"extracted) in {base} or {base / _CIFAR_FOLDER}; missing in {folder}: {', '.join(missing)}"
        )
        if not download:
            message += f". Pass {_say(cli, 'download=True', '--download')} to fetch them into {base / _CIFAR_FOLDER}"
        return message + "."

    @staticmethod
    def _download(base: Path, cli: bool) -> None:
        """Fetch the archive and extract the missing batch files into ``base/cifar-10-batches-py``."""
        filename, md5 = _CIFAR_ARCHIVE
        try:
            archive = download_file(_CIFAR_URLS, filename, base, md5)
        except DownloadError as err:
            raise DownloadError(
                f"CIFAR-10: download failed (no network?). Extract {filename} from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html so that {base / _CIFAR_FOLDER} holds "
                f"data_batch_1..5 and test_batch, or pass {_say(cli, 'root=', '--data-root')} a folder that has them. "
                f"{err}"
            ) from err
        folder = base / _CIFAR_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        wanted = {*_CIFAR_FILES["train"], *_CIFAR_FILES["test"], "batches.meta"}
        # Extract only regular files with the known names: no member path reaches the file system.
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and len(parts) == 2 and parts[0] == _CIFAR_FOLDER and parts[1] in wanted:
                    source = tar.extractfile(member)
                    if source is not None and not (folder / parts[1]).exists():
                        with source, atomic_writer(folder / parts[1], fsync=True) as target:
                            shutil.copyfileobj(source, target)
        archive.unlink()


# -- Image folders -----------------------------------------------------------------------------------------------


def _list_images(root: Path, extensions: Sequence[str]) -> list[Path]:
    """Image files under ``root`` (recursive, following links, skipping hidden files and folders), sorted."""
    suffixes = {ext.lower() for ext in extensions}
    found = []
    for directory, subdirectories, filenames in os.walk(root, followlinks=True):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        found += [
            Path(directory) / name
            for name in filenames
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes
        ]
    return sorted(found)


def _as_stored(image: Tensor) -> Tensor:
    """A float image in [-1, 1] rounded to 8 bits, as an image file of its final size would hold it."""
    return to_signed_unit(float_to_uint8(image))


def _check_folder(dataset: str, folder: Path, extensions: Sequence[str]) -> list[Path]:
    """The images under ``folder``; FileNotFoundError naming the dataset if the folder is missing or empty."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{dataset}: folder {folder} does not exist (expected a folder of images)")
    paths = _list_images(folder, extensions)
    if not paths:
        patterns = ", ".join(f"*{ext}" for ext in extensions)
        raise FileNotFoundError(f"{dataset}: no images ({patterns}) found under {folder} (searched recursively)")
    return paths


class ImageFolderDataset(Dataset[tuple[Tensor, int]]):
    """Every PNG/JPEG image under ``root`` (recursive), resized so the short side is ``image_size``, then
    centre-cropped to a square.

    Labels: when images sit in subfolders of ``root``, the index of the immediate subfolder name in sorted
    order (``classes`` lists the names); images directly in ``root`` get -1. Construction only lists the files;
    each item decodes its image (Pillow), so DataLoader workers decode in parallel. An undecodable file raises
    ValueError naming it when its item is read. ``channels`` defaults to 3 (RGB).
    """

    decodes_files = True  # what fastgan.train reads through DataLoader worker processes

    def __init__(
        self,
        root: Root,
        image_size: int = 64,
        channels: int | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        if image_size is None:
            raise ValueError("ImageFolder: image_size is required (the images may differ in size)")
        _check_options("ImageFolder", "train", image_size, channels)
        folder = Path(root).expanduser()
        self.paths = _check_folder("ImageFolder", folder, extensions)
        groups = [
            path.relative_to(folder).parts[0] if len(path.relative_to(folder).parts) > 1 else None
            for path in self.paths
        ]
        self.classes = sorted({group for group in groups if group is not None})
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels = torch.tensor([index[group] if group is not None else -1 for group in groups], dtype=torch.int64)
        self.image_size = image_size
        self.channels = channels or _DEFAULT_CHANNELS["folder"]
        self.root = folder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = to_signed_unit(read_image(self.paths[index], self.channels))
        return _as_stored(resize_center_crop(image, self.image_size)), int(self.labels[index])

    def __repr__(self) -> str:
        return (f"ImageFolderDataset(n={len(self)}, image_size={self.image_size}, channels={self.channels}, "
                f"root='{self.root}')")


class _TwoDomains(Dataset[tuple[Tensor, Tensor]]):
    """Pairing and augmentation of two unaligned image domains A and B, yielding ``(a, b)``.

    Item ``i`` pairs ``A[i % len(A)]`` with ``B[j]``, ``j`` drawn uniformly; ``len`` is ``max(len(A), len(B))``.
    With ``augment`` each image is resized so its short side is ``image_size * 286 / 256``, randomly cropped to
    ``image_size`` and flipped horizontally with probability 1/2 (CycleGAN's training augmentation); without, it is
    resized and centre-cropped. The draws (``j``, crop positions, flips) are made up front by a ``torch.Generator``
    seeded with ``(seed, epoch)``, so an item depends neither on the order of access nor on DataLoader workers;
    ``set_epoch(e)`` redraws them for epoch ``e``. Subclasses provide ``_load(domain, index)``: a uint8 [C, H, W]
    image with ``channels`` channels.
    """

    def __init__(self, count_a: int, count_b: int, image_size: int, channels: int, seed: int, augment: bool) -> None:
        self.counts = (count_a, count_b)
        self.image_size, self.channels, self.seed, self.augment = image_size, channels, seed, augment
        self.load_size = max(image_size, round(image_size * _CYCLEGAN_LOAD_RATIO))
        self.set_epoch(0)

    def _load(self, domain: int, index: int) -> Tensor:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Redraw the B index, crop positions and flips of every item from a generator seeded by (seed, epoch)."""
        generator = torch.Generator().manual_seed((self.seed + epoch * 0x9E3779B97F4A7C15) % 2**64)
        # Python lists: reading an item then makes no tensor reads (each a host read in the training step's profile).
        self._b_index = torch.randint(self.counts[1], (len(self),), generator=generator).tolist()
        # [item][domain] -> (y, x)
        self._crops = torch.rand(len(self), 2, 2, generator=generator, dtype=torch.float64).tolist()
        self._flips = (torch.rand(len(self), 2, generator=generator) < 0.5).tolist()

    def __len__(self) -> int:
        return max(self.counts)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a {type(self).__name__} of length {len(self)}")
        index %= len(self)
        a = self._prepare(self._load(0, index % self.counts[0]), index, 0)
        b = self._prepare(self._load(1, self._b_index[index]), index, 1)
        return a, b

    def _prepare(self, image: Tensor, item: int, domain: int) -> Tensor:
        image = to_signed_unit(image)
        if not self.augment:
            return _as_stored(resize_center_crop(image, self.image_size))
        top, left = self._crops[item][domain]
        image = crop(resize_short_side(image, self.load_size), self.image_size, top, left)
        if self._flips[item][domain]:
            image = image.flip(-1)
        return _as_stored(image)

    def domain_a(self, count: int) -> Tensor:
        """The first ``count`` A images, resized and centre-cropped (no augmentation): float32 [count, C, S, S]."""
        if count > self.counts[0]:
            raise ValueError(f"{type(self).__name__}: only {self.counts[0]} A images, asked for {count}")
        return torch.stack([_as_stored(resize_center_crop(to_signed_unit(self._load(0, i)), self.image_size))
                            for i in range(count)])


class UnpairedDataset(_TwoDomains):
    """Two unaligned image domains in CycleGAN's layout, yielding ``(a, b)`` pairs.

    ``root/trainA`` and ``root/trainB`` (``testA``, ``testB`` for ``split="test"``) are image folders
    (recursive PNG/JPEG), decoded one image per item. Pairing and augmentation (on by default for the train split)
    as described in ``_TwoDomains``: item ``i`` pairs ``A[i % len(A)]`` with a ``B[j]`` drawn per ``(seed, epoch)``.
    """

    decodes_files = True

    def __init__(
        self,
        root: Root,
        image_size: int,
        split: str = "train",
        channels: int | None = None,
        seed: int = 0,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        augment: bool | None = None,
    ) -> None:
        _check_options("Unpaired", split, image_size, channels)
        folder = Path(root).expanduser()
        folders = (folder / f"{split}A", folder / f"{split}B")
        missing = [f.name for f in folders if not f.is_dir()]
        if missing:
            present = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
            raise FileNotFoundError(
                f"Unpaired: expected image folders {folders[0].name}/ and {folders[1].name}/ in {folder} "
                f"(CycleGAN layout); missing: {', '.join(missing)}; subfolders there: {present or 'none'}"
            )
        self.root = folder
        self.paths = tuple(_check_folder("Unpaired", f, extensions) for f in folders)
        channels = channels or _DEFAULT_CHANNELS["unpaired"]
        augment = split == "train" if augment is None else augment
        super().__init__(len(self.paths[0]), len(self.paths[1]), image_size, channels, seed, augment)

    def _load(self, domain: int, index: int) -> Tensor:
        return read_image(self.paths[domain][index], self.channels)

    def __repr__(self) -> str:
        return (
            f"UnpairedDataset(n_a={self.counts[0]}, n_b={self.counts[1]}, image_size={self.image_size}, "
            f"channels={self.channels}, augment={self.augment}, root='{self.root}')"
        )


class DigitStylesDataset(_TwoDomains):
    """Two styles of scikit-learn's bundled digits, yielding ``(a, b)``: CycleGAN's default data, no files needed.

    A: the even-indexed digits as they are (thin light strokes on a dark ground); B: the odd-indexed digits with
    strokes thickened (a 3x3 maximum at ``image_size``) and the colours inverted (thick dark strokes on a light
    ground). The domains hold different images, so nothing pairs them but the style. Images are upsampled to
    ``image_size`` (bilinear) once at construction; pairing and augmentation (on by default, as for the train split
    of ``UnpairedDataset``) as described in ``_TwoDomains``. There is no train/test split; ``split`` is accepted for
    uniformity.
    """

    def __init__(
        self,
        image_size: int = 32,
        channels: int | None = None,
        split: str = "train",
        seed: int = 0,
        augment: bool | None = None,
    ) -> None:
        _check_options("digit-styles", split, image_size, channels)
        channels = channels or _DEFAULT_CHANNELS["digit-styles"]
        digits = to_signed_unit(_load_digits("DigitStylesDataset")[0])
        digits = torch.nn.functional.interpolate(digits, size=(image_size, image_size), mode="bilinear",
                                                 align_corners=False).clamp_(-1.0, 1.0)
        thick = -torch.nn.functional.max_pool2d(digits[1::2], 3, stride=1, padding=1)
        self.domains = tuple(float_to_uint8(d).expand(-1, channels, -1, -1).contiguous() for d in (digits[0::2], thick))
        super().__init__(len(self.domains[0]), len(self.domains[1]), image_size, channels, seed,
                         split == "train" if augment is None else augment)

    def _load(self, domain: int, index: int) -> Tensor:
        return self.domains[domain][index]

    def __repr__(self) -> str:
        return (f"DigitStylesDataset(n_a={self.counts[0]}, n_b={self.counts[1]}, image_size={self.image_size}, "
                f"channels={self.channels}, augment={self.augment})")


def make_dataset(
    name: str,
    root: Root | None = None,
    image_size: int | None = 32,
    channels: int | None = None,
    split: str = "train",
    download: bool = False,
    seed: int = 0,
    *,
    cli: bool = False,
) -> Dataset:
    """Build a dataset by name: one of ``DATASETS`` (digits, mnist, fashion-mnist, cifar10, folder, unpaired,
    digit-styles).

    Args:
        name: dataset name (case and ``_``/``-`` insensitive); an unknown name raises ValueError listing them.
        root: data folder; required for ``folder`` and ``unpaired``, ignored by ``digits`` and ``digit-styles``;
            ``None`` means ``~/.cache/fastgan/<name>`` for mnist, fashion-mnist and cifar10.
        image_size: side of the square images yielded; ``None`` keeps the native size (not for folder, unpaired,
            digit-styles).
        channels: 1 or 3; ``None`` means ``default_channels(name)``.
        split: "train" or "test" (the two-domain datasets augment the train split as CycleGAN does).
        download: fetch missing mnist / fashion-mnist / cifar10 files; an error for folder and unpaired.
        seed: seeds the pairing and augmentation draws of ``unpaired`` and ``digit-styles``; unused elsewhere.
        cli: name command-line flags (``--data-root``, ``--download``, ``--split``) in errors, as ``fastgan train``.

    Returns:
        A Dataset yielding ``(image, label)`` (``(a, b)`` for unpaired and digit-styles), images float32 [C, S, S]
        in [-1, 1].
    """
    key = _canonical_name(name)
    root_arg = _say(cli, "root=", "--data-root")
    if key in ("folder", "unpaired"):
        if root is None:
            raise ValueError(f"dataset {key!r} needs {root_arg} (a folder of images)")
        if download:
            raise ValueError(f"dataset {key!r} cannot be downloaded; point {root_arg} at your images")
    if key in ("folder", "unpaired", "digit-styles") and image_size is None:
        raise ValueError(f"dataset {key!r} needs an image_size (its images may differ in size)")
    if key == "digits":
        return DigitsDataset(image_size=image_size, channels=channels, split=split)
    if key == "digit-styles":
        return DigitStylesDataset(image_size, channels, split, seed)
    if key in ("mnist", "fashion-mnist"):
        return MNISTDataset(root, split, key == "fashion-mnist", image_size, channels, download, cli=cli)
    if key == "cifar10":
        return CIFAR10Dataset(root, split, image_size, channels, download, cli=cli)
    if key == "folder":
        if split != "train":
            raise ValueError(f"dataset 'folder' has no splits; point {root_arg} at the folder you want")
        return ImageFolderDataset(root, image_size, channels)
    return UnpairedDataset(root, image_size, split, channels, seed)
