"""Whole training steps replayed as CUDA graphs: ``graphed_step``.

A GAN step is short and made of many small kernels, so launching them costs more than running them. Capturing the
whole step (forward, backward, the gradient penalty's double backward, the optimiser) once and replaying it launches
one graph instead. ``torch.cuda.make_graphed_callables`` cannot do this (it refuses double backward and leaves the
optimiser outside) and ``torch.compile(mode="reduce-overhead")`` cannot differentiate twice, so the step is captured
whole with ``torch.cuda.graph``, as PyTorch's CUDA-graph notes describe:

- the first ``warmup`` calls run eagerly on a side stream (lazy state: optimiser moments, GradScaler, autotuning,
  Triton compiles, cuBLAS workspaces), with the caller's inputs: every call is a real step;
- the next call captures the step into a graph, with static copies of its tensor arguments, then replays it;
- later calls copy their tensors into those static buffers and replay. The outputs are the captured tensors,
  overwritten by the next replay: read or clone them before the next call.

What the step needs for this (the trainer keeps all of it): no host synchronisation (``.item()``, ``GradScaler``'s
``get_scale``, printing a tensor); optimisers made with ``capturable=True`` (PyTorch refuses to capture any other
step; ``fused=True`` beside it is the fastest), with a tensor learning rate when it changes between steps; random
numbers from the default CUDA generator or from generators passed as ``generators`` (their state advances with every
replay, so a checkpoint of it stays exact); the same shapes and Python arguments on every call (checked: a changed
Python argument raises); ``torch.autocast(..., cache_enabled=False)`` inside the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["GraphedStep", "graphed_step"]


class GraphedStep:
    """``fn`` replayed as one CUDA graph after ``warmup`` eager calls; see the module docstring.

    Args:
        fn: the whole step, ``fn(*args) -> outputs`` (tensors, or dicts / tuples of them). Host-side effects
            (counters, logging) run only during the warm-up and the capture: keep them outside ``fn``.
        warmup: eager calls before the capture (PyTorch's notes use 3; 11 with DistributedDataParallel).
        pool: a memory pool (``torch.cuda.graph_pool_handle()``) shared with other graphs replayed in turn.
        generators: ``torch.Generator`` s on the GPU that ``fn`` draws from besides the default one.
    """

    def __init__(
        self,
        fn: Callable,
        warmup: int = 3,
        pool=None,
        generators: Sequence[torch.Generator] = (),
    ) -> None:
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"graphed_step: warmup must be a positive int, got {warmup!r} (PyTorch's notes use 3)")
        self.fn, self.warmup, self.pool, self.generators = fn, warmup, pool, tuple(generators)
        self.calls = 0
        self.graph = None
        self._static_args: list = []
        self._outputs = None
        self._side = None  # the warm-up stream, made once

    def __call__(self, *args):
        devices = {a.device for a in args if isinstance(a, torch.Tensor)} | {g.device for g in self.generators}
        if any(device.type != "cuda" for device in devices) or not torch.cuda.is_available():
            raise RuntimeError("graphed_step: CUDA graphs need a CUDA device and CUDA tensors; on the CPU call the "
                               "step directly")
        if self.graph is not None:
            return self._replay(args)
        self.calls += 1
        if self.calls <= self.warmup:
            return self._eager_on_side_stream(args)
        return self._capture(args)

    def _eager_on_side_stream(self, args):
        # Warm-up on a side stream, as PyTorch's notes ask: lazy initialisation then never lands on the capture stream.
        if self._side is None:
            self._side = torch.cuda.Stream()
        side = self._side
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            outputs = self.fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        return outputs

    def _capture(self, args):
        self._static_args = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        torch.cuda.synchronize()
        # thread_local: only this thread's calls are checked, so a DataLoader's pin-memory thread may keep working.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            self._outputs = self.fn(*self._static_args)
        self.graph = graph
        graph.replay()  # capturing runs nothing: this call's step happens here
        return self._outputs

    def _replay(self, args):
        if len(args) != len(self._static_args):
            raise TypeError(f"graphed_step: called with {len(args)} arguments, captured with {len(self._static_args)}")
        for index, (arg, static) in enumerate(zip(args, self._static_args)):
            if isinstance(static, torch.Tensor):
                if not isinstance(arg, torch.Tensor) or arg.shape != static.shape or arg.dtype != static.dtype:
                    got = f"{tuple(arg.shape)} {arg.dtype}" if isinstance(arg, torch.Tensor) else type(arg).__name__
                    raise ValueError(
                        f"graphed_step: argument {index} is {got}, captured as {tuple(static.shape)} {static.dtype}; "
                        "a graph replays fixed shapes: capture one graph per shape (e.g. drop the last partial batch)"
                    )
                static.copy_(arg, non_blocking=True)
            elif arg is not static and arg != static:
                raise ValueError(
                    f"graphed_step: argument {index} changed from {static!r} to {arg!r}; a graph replays the Python "
                    "values it was captured with: pass it as a tensor, or capture one graph per value"
                )
        self.graph.replay()
        return self._outputs


def graphed_step(fn: Callable | None = None, *, warmup: int = 3, pool=None,
                 generators: Sequence[torch.Generator] = ()):
    """``fn`` (a whole training step) as a ``GraphedStep``; usable as a decorator, with or without arguments."""
    if fn is None:
        return lambda f: GraphedStep(f, warmup, pool, generators)
    return GraphedStep(fn, warmup, pool, generators)
