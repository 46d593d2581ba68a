"""Run metrics: ``metrics.jsonl`` and ``metrics.csv`` in the run folder, TensorBoard when installed, progress (tqdm).

Losses are accumulated on the device as tensors during the steps (no host synchronisation); ``LossMeter.mean()``
moves them to the host once per logging interval.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import torch


class LossMeter:
    """Sums of detached scalar tensors since the last ``mean()``, kept on their device, and how many of each (a loss
    made only on some steps, as lazy R1, is averaged over those)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            # A copy, never the tensor itself: a CUDA graph overwrites its outputs with every replay.
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
            self.counts[name] = self.counts.get(name, 0) + 1

    def mean(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """Means since the last call (one host transfer for all of them), then reset. ``reduce`` maps the vector of
        means before the transfer (the average over processes under torchrun)."""
        if not self.sums:
            return {}
        names = list(self.sums)
        values = torch.stack([self.sums[n] / self.counts[n] for n in names])
        values = (reduce(values) if reduce is not None else values).tolist()
        self.sums, self.counts = {}, {}
        return dict(zip(names, values))


class MetricsWriter:
    """Appends one row per logging interval to ``metrics.jsonl`` and ``metrics.csv`` (and TensorBoard if present)."""

    def __init__(self, folder: Path, tensorboard: bool = True, extra_fields: tuple[str, ...] = ()) -> None:
        """``extra_fields``: columns of rows written only now and then (quality scores), in the CSV header from the
        start; rows without them leave them empty."""
        self.folder = folder
        self.extra_fields = extra_fields
        self.jsonl_path, self.csv_path = folder / "metrics.jsonl", folder / "metrics.csv"
        self._csv_fields: list[str] | None = None
        if self.csv_path.is_file():
            with open(self.csv_path, newline="") as handle:
                self._csv_fields = next(csv.reader(handle), None)
        self.tensorboard = _tensorboard_writer(folder / "tensorboard") if tensorboard else None

    def write(self, row: dict[str, float]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.jsonl_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        new = self._csv_fields is None
        if new:
            self._csv_fields = list(row) + [name for name in self.extra_fields if name not in row]
        with open(self.csv_path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._csv_fields, extrasaction="ignore", restval="")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tensorboard is not None:
            step = int(row["step"])
            for name, value in row.items():
                if name != "step":
                    self.tensorboard.add_scalar(name, value, step)
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard_writer(folder: Path):
    """A SummaryWriter, or None when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


class Progress:
    """Progress of a run: a tqdm bar (rate, time left, the latest losses) on a terminal; off a terminal (a log file,
    a pipe, CI) one plain line per logging interval, since a redrawn bar there is a pile of carriage returns."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True, initial: int = 0,
                 world_size: int = 1) -> None:
        """``world_size``: processes of a torchrun launch, shown on the line when more than one."""
        self.total, self.stream, self.enabled = total, stream or sys.stderr, enabled
        self.world = f" | {world_size} processes" if world_size > 1 else ""
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = None
        if enabled and self.tty:
            try:  # an install requirement; imported here so that importing fastgan.train never needs it
                from tqdm import tqdm
            except ImportError:  # then plain lines, as off a terminal
                return
            self.bar = tqdm(total=total, initial=initial, file=self.stream, unit="step", dynamic_ncols=True)

    def advance(self, step: int) -> None:
        """Called after every step: moves the bar (no host synchronisation: nothing is read from the device)."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def update(self, step: int, row: dict[str, float]) -> None:
        """Called at each logging interval with the metrics row: losses onto the bar, or one plain line."""
        if not self.enabled:
            return
        losses = " ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith(("loss", "penalty", "r1")))
        if self.bar is not None:
            self.bar.set_postfix_str(f"{losses} | {row.get('images_per_s', 0.0):.0f} img/s{self.world}", refresh=False)
            self.bar.update(step - self.bar.n)
            return
        rate = row.get("steps_per_s", 0.0)
        left = (self.total - step) / rate if rate > 0 else float("nan")
        self.stream.write(
            f"step {step}/{self.total}{self.world} | {rate:.2f} it/s {row.get('images_per_s', 0.0):.0f} img/s | "
            f"{losses} | "
            f"eta {_duration(left)}\n"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
