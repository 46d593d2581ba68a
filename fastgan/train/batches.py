"""A resumable stream of training batches: the order depends only on ``(seed, epoch)``.

Each epoch visits a permutation of the dataset drawn from a generator seeded with ``(seed, epoch)``, in batches of
``batch_size`` (the last incomplete batch is dropped so batch norm always sees full batches). The state is just
``(epoch, position)``, so a checkpoint restores the exact data order.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

_CACHE_LIMIT_BYTES = 2 * 2**30  # materialise datasets up to 2 GiB as one float tensor (MNIST at 28x28: 188 MB)


class BatchStream:
    """``next(stream)`` -> a float32 batch on ``device`` ([B, C, S, S], or a tuple of two for unpaired data)."""

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, device: torch.device, channels_last: bool = False
    ) -> None:
        if len(dataset) < batch_size:
            raise ValueError(
                f"the dataset has {len(dataset)} images, fewer than one batch of {batch_size}: lower --batch-size"
            )
        self.dataset, self.batch_size, self.seed, self.device = dataset, batch_size, seed, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch, self.position = 0, 0
        self._cache = self._materialise(dataset) if not hasattr(dataset, "set_epoch") else None
        self._order = self._permutation(0)

    def _materialise(self, dataset: Dataset) -> torch.Tensor | None:
        """All images as one tensor on the device, when small enough (indexing it is far faster than per item)."""
        first, second = dataset[0]
        if isinstance(second, torch.Tensor) or first.numel() * 4 * len(dataset) > _CACHE_LIMIT_BYTES:
            return None  # pairs of images (unpaired data) or too big: read per batch
        return torch.stack([dataset[i][0] for i in range(len(dataset))]).to(self.device)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return torch.randperm(len(self.dataset), generator=generator)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.position + self.batch_size > len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        index = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        if self._cache is not None:
            return self._cache[index.to(self._cache.device)].contiguous(memory_format=self.memory_format)
        items = [self.dataset[i] for i in index.tolist()]
        if isinstance(items[0][1], torch.Tensor):  # unpaired: (a, b)
            return tuple(self._to_device(torch.stack([item[k] for item in items])) for k in range(2))
        return self._to_device(torch.stack([item[0] for item in items]))

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
