"""A resumable stream of training batches: the order depends only on ``(seed, epoch)``.

Each epoch visits a permutation of the dataset drawn from a generator seeded with ``(seed, epoch)``, in batches of
``batch_size`` (the last incomplete batch is dropped so batch norm always sees full batches). The state is just
``(epoch, position)``, so a checkpoint restores the exact data order.

Datasets that decode image files per item (``decodes_files``: ``ImageFolderDataset``, ``UnpairedDataset``) are read
through a ``torch.utils.data.DataLoader`` with ``workers`` processes, which decode the images of the coming batches
in parallel. Its batch sampler is the epoch's permutation from ``position`` on, and ``position`` counts the batches
the training loop has taken (not those the workers have prefetched), so a checkpoint taken mid-epoch resumes at
the very next batch. Random augmentation lives in the datasets, drawn per ``(seed, epoch)`` in ``set_epoch``, so
items do not depend on which worker reads them. Any other dataset yielding single images (digits, MNIST, CIFAR-10,
tensors a caller passes) is converted once into a float tensor on the device, up to 2 GiB, and indexed per batch;
the rest (pairs, larger data) go through the same DataLoader in the training process. With ``labels=True``
(class-conditional training) each batch comes with its int64 labels.

Data-parallel runs (``world_size`` processes): every process walks the same permutation in global batches of
``batch_size`` and takes its ``rank``-th equal slice of each, so the processes read disjoint shards of every epoch,
and together exactly the batches one process would read (the state, ``(epoch, position)``, counts global batches'
images and is the same on every process).
"""

from __future__ import annotations

import signal

import torch
from torch.utils.data import DataLoader, Dataset

_CACHE_LIMIT_BYTES = 2 * 2**30  # materialise datasets up to 2 GiB as one float tensor (MNIST at 28x28: 188 MB)


def _ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C (which a terminal sends to the whole process group) to the training process,
    which finishes its step, saves and shuts them down; dying first, they would fail the step's batch. SIGTERM
    stays deadly: it is how the DataLoader itself ends a worker that does not stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BatchStream:
    """``next(stream)`` -> a float32 batch on ``device`` ([B, C, S, S], or a tuple of two for unpaired data; with
    ``labels``, ``(images, labels [B])``)."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        device: torch.device,
        channels_last: bool = False,
        workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        labels: bool = False,
    ) -> None:
        if len(dataset) < batch_size:
            raise ValueError(
                f"the dataset has {len(dataset)} images, fewer than one batch of {batch_size}: lower --batch-size"
            )
        self.dataset, self.batch_size, self.seed, self.device = dataset, batch_size, seed, device
        self.local_size = batch_size // world_size
        self.offset = rank * self.local_size  # this process's slice of each global batch
        self.labels = labels
        self._label_cache = None
        files = getattr(dataset, "decodes_files", False)
        self.workers = workers if files else 0  # worker processes pay off only for decoding files
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch, self.position = 0, 0
        self._cache = None if files else self._materialise(dataset)
        self._loader = None  # iterator over the rest of this epoch's batches (DataLoader path), made on first use
        self._order = self._permutation(0)

    def _materialise(self, dataset: Dataset) -> torch.Tensor | None:
        """All images as one tensor on the device, when small enough (indexing it is far faster than per item)."""
        first, second = dataset[0]
        if isinstance(second, torch.Tensor) or first.numel() * 4 * len(dataset) > _CACHE_LIMIT_BYTES:
            return None  # pairs of images (unpaired data) or too big: read per batch
        items = [dataset[i] for i in range(len(dataset))]
        if self.labels:
            self._label_cache = torch.tensor([int(label) for _, label in items], dtype=torch.int64).to(self.device)
        return torch.stack([image for image, _ in items]).to(self.device)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # before the epoch's DataLoader copies the dataset into its workers
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return torch.randperm(len(self.dataset), generator=generator)

    def _epoch_loader(self):
        """A DataLoader iterator over the batches of this epoch from ``position`` on."""
        start, stop = self.offset, self.offset + self.local_size
        batches = [self._order[p : p + self.batch_size][start:stop].tolist()
                   for p in range(self.position, len(self._order) - self.batch_size + 1, self.batch_size)]
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_ignore_interrupts if self.workers else None,
            generator=torch.Generator().manual_seed(self.seed),  # the loader's own seed draw leaves torch's RNG alone
        )
        return iter(loader)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.position + self.batch_size > len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
            self._loader = None
        if self._cache is not None:
            index = self._order[self.position + self.offset : self.position + self.offset + self.local_size]
            index = index.to(self._cache.device)
            self.position += self.batch_size
            images = self._cache[index].contiguous(memory_format=self.memory_format)
            return (images, self._label_cache[index]) if self.labels else images
        if self._loader is None:
            self._loader = self._epoch_loader()
        first, second = next(self._loader)
        self.position += self.batch_size
        if second.dim() == first.dim():  # unpaired: (a, b); otherwise (images, labels)
            return self._to_device(first), self._to_device(second)
        if self.labels:
            return self._to_device(first), second.to(self.device, torch.int64, non_blocking=True)
        return self._to_device(first)

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
        self._loader = None
