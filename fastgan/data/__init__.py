"""Data layer: datasets yielding images in [-1, 1], and image grids / PNG output. No torchvision needed.

Datasets (``make_dataset(name, ...)`` builds any of ``DATASETS``):
    DigitsDataset        scikit-learn's bundled 8x8 digits, the no-download default
    MNISTDataset         MNIST / Fashion-MNIST IDX files (gzip or raw), optional download
    CIFAR10Dataset       CIFAR-10 python batches, optional download
    ImageFolderDataset   any folder of PNG/JPEG images, labels from subfolders, decoded per item
    UnpairedDataset      CycleGAN's trainA/trainB layout, yielding (a, b), decoded per item, augmented
    DigitStylesDataset   two styles of the bundled digits, yielding (a, b): CycleGAN's no-download default

Images: ``make_grid``, ``save_image_grid``, ``save_images``, ``to_uint8_hwc``, ``read_image`` (Pillow, imported
only when one of them runs).
"""

from .datasets import (
    DATASETS,
    IMAGE_EXTENSIONS,
    CIFAR10Dataset,
    DigitsDataset,
    DigitStylesDataset,
    ImageDataset,
    ImageFolderDataset,
    MNISTDataset,
    UnpairedDataset,
    default_channels,
    make_dataset,
)
from .download import DownloadError, default_cache_dir
from .idx import read_idx
from .images import make_grid, read_image, save_image_grid, save_images, to_uint8_hwc

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "CIFAR10Dataset",
    "DigitStylesDataset",
    "DigitsDataset",
    "DownloadError",
    "ImageDataset",
    "ImageFolderDataset",
    "MNISTDataset",
    "UnpairedDataset",
    "default_cache_dir",
    "default_channels",
    "make_dataset",
    "make_grid",
    "read_idx",
    "read_image",
    "save_image_grid",
    "save_images",
    "to_uint8_hwc",
]
