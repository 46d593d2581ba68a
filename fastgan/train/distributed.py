"""Data-parallel training on ``torch.distributed``: what ``Trainer`` needs when ``torchrun`` starts several processes.

``Parallel.setup(device)`` joins the process group that ``torchrun`` describes in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL on GPUs (one per process, ``cuda:LOCAL_RANK``),
gloo on CPUs. Without those variables it is a one-process stand-in whose methods do nothing, so the trainer has one
code path.

Why not ``DistributedDataParallel``: gradient penalties (WGAN-GP, R1) differentiate the critic twice, which DDP's
reducer hooks do not support, and GAN steps backpropagate through networks whose gradients must not be reduced (the
generator step runs the frozen critic). As StyleGAN2-ADA does, gradients are averaged explicitly after ``backward``
and before the optimiser step: flattened per dtype into buckets of up to ``BUCKET_BYTES`` (one collective per bucket,
all launched before the first is waited for, never one per parameter).

Failure: every process beats a heartbeat into the rendezvous store each ``HEARTBEAT_S`` seconds from a thread; a
watchdog in that thread ends the process (exit status 1, a message naming the silent rank) when a peer has not beaten
for ``PEER_TIMEOUT_S`` seconds (the environment variable ``FASTGAN_PEER_TIMEOUT_S`` changes it), so a process that
dies takes the others down within that time even when they are blocked in a collective. A process that hangs with
its heartbeat thread alive (a deadlocked kernel) is caught by the collective timeout, ``COLLECTIVE_TIMEOUT``. Only
rank 0 writes checkpoints, and atomically, so the last one stays loadable.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..nn.norm_act import BatchNormAct2d, _BatchNormActBase
from ..ops.bias_act import bias_act

BUCKET_BYTES = 25 * 2**20  # DDP's default bucket: large enough that latency is amortised, small enough to overlap
HEARTBEAT_S = 1.0
PEER_TIMEOUT_S = 15.0  # a peer silent this long is dead: the others exit naming it (a checkpoint write is < 1 s)
COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # a collective blocked longer raises (the watchdog acts much sooner)
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_launch: tuple | None = None  # (watchdog, control group) of the process group this process joined


class Parallel:
    """The process group of a run: ``rank``, ``world_size``, ``device``, and the collectives the trainer uses.

    ``Parallel()`` is one process (every method a no-op); ``Parallel.setup`` joins a torchrun launch.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | None = None) -> None:
        self.rank, self.world_size = rank, world_size
        self.device = device or torch.device("cpu")
        self._control = None  # a gloo group for host-side decisions (stop requests) next to NCCL's
        self._watchdog: _Watchdog | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes samples, metrics and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def setup(cls, device: torch.device) -> Parallel:
        """Join the torchrun launch described by the environment (once per process), or a one-process stand-in.

        ``device`` is the configured one; on CUDA each process takes ``cuda:LOCAL_RANK`` instead.
        """
        global _launch
        if not dist.is_initialized():
            if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
                return cls(device=device)
            missing = [name for name in _ENV if name not in os.environ]
            if missing:
                raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} are not: launch with torchrun "
                                 "(torchrun --nproc_per_node N -m fastgan train ...)")
            timeout, local_rank = _peer_timeout(), int(os.environ["LOCAL_RANK"])
            if device.type == "cuda":
                device = torch.device("cuda", local_rank)
                torch.cuda.set_device(device)
            store, rank, world_size = next(dist.rendezvous("env://", timeout=COLLECTIVE_TIMEOUT))
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                    world_size=world_size, timeout=COLLECTIVE_TIMEOUT,
                                    device_id=device if device.type == "cuda" else None)
            watchdog = _Watchdog(dist.PrefixStore("fastgan/heartbeat/", store), rank, world_size, timeout)
            _launch = (watchdog, dist.new_group(backend="gloo") if device.type == "cuda" else None)
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda" and world_size > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        parallel = cls(rank, world_size, device)
        if _launch is not None:
            parallel._watchdog, parallel._control = _launch
        elif world_size > 1 and dist.get_backend() != "gloo":  # a group the caller made: our own gloo group beside
            parallel._control = dist.new_group(backend="gloo")
            _launch = (None, parallel._control)
        return parallel

    # -- collectives -----------------------------------------------------------------------------------------------

    def all_reduce_gradients(self, params: list[torch.Tensor]) -> None:
        """Average ``p.grad`` over the processes, in place, in buckets (parameters without a gradient are skipped:
        every process has the same ones)."""
        if not self.enabled:
            return
        pending = []
        for bucket in _buckets([p.grad for p in params if p.grad is not None]):
            flat = torch._utils._flatten_dense_tensors(bucket)
            pending.append((bucket, flat, dist.all_reduce(flat, async_op=True)))
        for bucket, flat, work in pending:
            work.wait()
            flat.mul_(1.0 / self.world_size)
            torch._foreach_copy_(bucket, torch._utils._unflatten_dense_tensors(flat, bucket))

    def average(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over the processes (a new tensor)."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world_size

    def broadcast_parameters(self, modules: list[nn.Module]) -> None:
        """Rank 0's parameters and buffers on every process (weights are seeded alike, but a GPU's initialisation
        need not be bit-reproducible); also the first collective, so every process has joined."""
        if not self.enabled:
            return
        tensors = [t.detach() for m in modules for t in (*m.parameters(), *m.buffers())]
        with torch.no_grad():
            for bucket in _buckets(tensors):
                flat = torch._utils._flatten_dense_tensors(bucket)
                dist.broadcast(flat, 0)
                torch._foreach_copy_(bucket, torch._utils._unflatten_dense_tensors(flat, bucket))
        if self._watchdog is not None:
            self._watchdog.start()

    def gather(self, batch: torch.Tensor) -> torch.Tensor:
        """The global batch of detached per-process ``batch``es, in rank order."""
        if not self.enabled:
            return batch
        parts = [torch.empty_like(batch) for _ in range(self.world_size)]
        dist.all_gather(parts, batch.detach().contiguous())
        return torch.cat(parts)

    def local(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's equal slice of a global ``batch`` (along dim 0)."""
        if not self.enabled:
            return batch
        size = batch.shape[0] // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on one (stop requests reach all processes at the same step)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._control)
        return bool(value.item())

    def barrier(self) -> None:
        """Wait for every process (the CPU-side group: no device synchronisation)."""
        if self.enabled:
            dist.barrier(group=self._control)

    def close(self) -> None:
        """Wait for every process (rank 0 may still be writing its last checkpoint), then leave the group."""
        global _launch
        if not self.enabled:
            return
        if self._watchdog is not None:
            self._watchdog.finish()
        self.barrier()
        if self._watchdog is not None:
            self._watchdog.stop()
        dist.destroy_process_group()
        _launch = None

    def wait_for_watchdog(self) -> None:
        """After a failed collective: give the watchdog the time to name the dead peer (it then ends the process; when
        no peer died, the caller re-raises the error after this wait)."""
        if self._watchdog is not None and self._watchdog.running:
            time.sleep(self._watchdog.timeout + 3 * HEARTBEAT_S)

    def describe(self) -> str:
        return f"{self.world_size} processes ({dist.get_backend()})" if self.enabled else "1 process"


def _buckets(tensors: list[torch.Tensor]):
    """``tensors`` in groups of one dtype and about ``BUCKET_BYTES``, in order (dtypes in first-seen order: the same
    on every process)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        bucket, size = [], 0
        for tensor in group:
            bucket.append(tensor)
            size += tensor.numel() * tensor.element_size()
            if size >= BUCKET_BYTES:
                yield bucket
                bucket, size = [], 0
        if bucket:
            yield bucket


class _Watchdog:
    """Beats ``rank``'s heartbeat into ``store``; exits the process when a peer's heartbeat stops for ``timeout``
    seconds (a daemon thread: it runs while the main thread is blocked in a collective). A peer that ended normally
    writes ``done`` instead (``finish``, also at interpreter exit), which is never counted as dead."""

    def __init__(self, store, rank: int, world_size: int, timeout: float) -> None:
        self.store, self.rank, self.world_size, self.timeout = store, rank, world_size, timeout
        self.beats, self.done = 0, False
        self.store.set(str(rank), "0")
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastgan-heartbeat", daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()
            atexit.register(self._at_exit)  # a Python-API run that ends without Parallel.close()

    def finish(self) -> None:
        """This process ended normally: peers still working, or waiting for it at the final barrier, go on."""
        self.done = True
        self.store.set(str(self.rank), "done")

    def stop(self) -> None:
        self._stopped.set()

    def _at_exit(self) -> None:
        self.stop()
        with contextlib.suppress(Exception):  # the store may be gone already
            self.finish()

    def _run(self) -> None:
        peers = [r for r in range(self.world_size) if r != self.rank]
        last: dict[int, tuple[bytes, float]] = {r: (b"", time.monotonic()) for r in peers}
        while not self._stopped.wait(HEARTBEAT_S):
            try:
                if not self.done:
                    self.beats += 1
                    self.store.set(str(self.rank), str(self.beats))
                values = self.store.multi_get([str(r) for r in peers])
            except Exception as err:  # the store lives in torchrun's agent (rank 0's process without torchrun)
                if self._stopped.is_set() or (0 in last and last[0][0] == b"done"):
                    return  # shutting down, or rank 0 ended normally and took its store with it
                _die(f"rank {self.rank}: lost the rendezvous store ({type(err).__name__}): its host ended (torchrun's "
                     "agent; rank 0 in a launch without torchrun)")
            now = time.monotonic()
            for peer, value in zip(peers, values):
                if value == b"done" or value != last[peer][0]:
                    last[peer] = (value, now)
                elif now - last[peer][1] > self.timeout:
                    _die(f"rank {peer} stopped responding (no heartbeat for {self.timeout:g} s: it died, or its "
                         f"machine is unreachable); ending rank {self.rank}. The last checkpoint written stays "
                         "loadable: continue with fastgan train --resume")


def _peer_timeout() -> float:
    text = os.environ.get("FASTGAN_PEER_TIMEOUT_S", "")
    try:
        timeout = float(text) if text else PEER_TIMEOUT_S
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ValueError(f"FASTGAN_PEER_TIMEOUT_S={text!r}: expected a positive number of seconds "
                         f"(default {PEER_TIMEOUT_S:g})")
    return timeout


def _die(message: str) -> None:
    print(f"fastgan train: {message}", file=sys.stderr, flush=True)
    os._exit(1)  # the main thread may be blocked in a collective: nothing else would end it


# -- synchronised batch norm -----------------------------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """A differentiable sum over the processes: its adjoint is itself, so it differentiates to any order."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


def _sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)


class SyncBatchNormAct2d(_BatchNormActBase):
    """``BatchNormAct2d`` whose training statistics are those of the global batch (all processes), differentiable
    twice (the all-reduces are autograd functions), so gradient penalties work through it.

    Same parameters, buffers and ``state_dict`` keys as ``BatchNormAct2d`` (checkpoints load into either). In eval
    mode, or on one process, it is exactly ``BatchNormAct2d``. Not a ``BatchNormAct2d`` subclass on purpose: the fused
    convolutions run such a norm inside their own op, with per-process statistics.
    """

    def __init__(self, norm: BatchNormAct2d) -> None:
        factory = {"device": norm.weight.device, "dtype": norm.weight.dtype} if norm.affine else {}
        super().__init__(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats, norm.act,
                         norm.alpha, norm.impl, **factory)
        # Share the tensors themselves: optimisers and EMA built before or after the conversion see the same ones.
        for name, tensor in (*norm.named_parameters(recurse=False), *norm.named_buffers(recurse=False)):
            setattr(self, name, tensor)
        self.train(norm.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        world = dist.get_world_size()
        x32 = x.float()
        # Two passes (mean, then the centred second moment) as one would on one process: the sums of squares
        # minus the squared mean lose ~1e-4 relative precision on activations with a large mean.
        count = x.numel() // x.shape[1] * world
        mean = _sum_over_processes(x32.sum((0, 2, 3))) / count
        centred = x32 - mean[None, :, None, None]
        var = _sum_over_processes(centred.square().sum((0, 2, 3))) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * (count / max(count - 1, 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.float()
        y = centred * scale[None, :, None, None]
        shift = self.bias.float() if self.affine else torch.zeros_like(mean)
        return bias_act(y, shift, act=self.act, alpha=self.alpha, impl=self.impl).to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNormAct2d`` in ``module`` by a ``SyncBatchNormAct2d`` sharing its tensors, and every
    ``torch.nn`` batch norm by ``nn.SyncBatchNorm`` (what ``--sync-bn`` does); returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, BatchNormAct2d):
            setattr(module, name, SyncBatchNormAct2d(child))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            convert_sync_batchnorm(child)
    return module
