"""CycleGAN's image history (Shrivastava et al., 2017): the discriminator sees past fakes as well as new ones."""

from __future__ import annotations

import torch


class ImagePool:
    """Up to ``size`` past generated images. ``query(batch)`` returns a batch of the same shape where each image is,
    with probability 1/2 once the pool is full, swapped for a stored one (which the new image replaces).

    Randomness comes from the pool's own CPU ``torch.Generator`` so a resumed run draws the same choices; the stored
    images and the generator state are part of ``state_dict``. ``size=0`` returns the batch unchanged.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def query(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return batch
        out = []
        # The draws are made on the CPU generator, so the decisions never wait on the GPU.
        draws = torch.rand(batch.shape[0], generator=self.generator).tolist()
        picks = torch.randint(max(self.size, 1), (batch.shape[0],), generator=self.generator).tolist()
        for image, draw, pick in zip(batch.detach(), draws, picks):
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif draw < 0.5:
                out.append(self.images[pick].clone())
                self.images[pick] = image.clone()
            else:
                out.append(image)
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"images": [image.cpu() for image in self.images], "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.images = [image.to(device) for image in state["images"]]
        self.generator.set_state(state["generator"])
