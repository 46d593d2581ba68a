"""``Trainer``: one training loop for every GAN family, with exact resume.

A step is one generator update. The GAN families (gan, dcgan, wgan, wgan-gp) first make ``n_critic``
discriminator updates on fresh real batches (weight clipping after each for WGAN, the gradient penalty inside
each for WGAN-GP), then the generator update reuses the last critic step's fakes. CycleGAN updates both
generators (adversarial least squares + cycle L1 + identity L1), then both discriminators on fakes drawn through
the 50-image history pools. Everything else is shared: AMP with one GradScaler per network, channels_last, the
generator EMA, linear learning-rate decay, fixed-noise sample grids, metrics, atomic checkpoints, the resolved
settings as ``config.toml`` in the run folder. ``request_stop()`` (the command line calls it on Ctrl-C / SIGTERM)
ends ``fit`` after the current step with a checkpoint.

Exact resume: every source of randomness after construction is a generator whose state is checkpointed (noise,
penalty mixing, data order, image pools, the global torch RNG), so ``fit(n)`` then resume then ``fit(m)`` gives
bit-identical parameters to ``fit(m)`` on CPU.

Under ``torchrun`` (:mod:`fastgan.train.distributed`) ``batch_size`` is the global batch: every process draws the
same global noise, penalty weights, data order and CycleGAN pool choices from the seed and works on its equal slice,
and gradients are averaged before each optimiser step, so the processes hold identical parameters and compute one
process's step up to float summation order (batch norm too with ``sync_bn``; without it, each slice's statistics).
Only rank 0 writes; its checkpoint is the whole state, loadable by a run with any number of processes.

Class-conditional runs (``conditional``: projection or acgan) feed the real batches' labels to the discriminator,
draw the fakes' labels uniformly from the noise generator (so they resume exactly too), and for acgan add the
auxiliary classifier's cross-entropy (real and fake images in the discriminator step, fake ones in the generator
step, weight 1 as in Odena et al. 2017). Sample grids show the classes in turn.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_writer
from ..data import make_dataset, save_image_grid
from ..losses import d_loss, g_loss, gradient_penalty, r1_penalty
from ..metrics.evaluate import QUALITY_FIELDS, QualityMonitor
from ..models import build_networks, per_sample
from .batches import BatchStream
from .checkpoint import LAST, load_checkpoint, save_checkpoint
from .config import FAMILIES, RESUMABLE, TrainConfig, config_toml, resolve_device
from .distributed import Parallel, convert_sync_batchnorm
from .ema import EMA
from .graphs import GraphedStep
from .metrics import LossMeter, MetricsWriter, Progress
from .pool import ImagePool

CHECKPOINT_FORMAT = 1
CONFIG_FILE = "config.toml"
_NUM_TRANSLATIONS = 8  # CycleGAN sample grids: this many A images and their translations
# What a run writes into its folder (besides step_*.pt): found there, they mean the folder holds a run.
_RUN_FILES = (LAST, CONFIG_FILE, "metrics.csv", "metrics.jsonl")
_RUN_FOLDERS = ("samples", "tensorboard")


def previous_run(out: str | Path) -> list[Path]:
    """The files and folders of an earlier run in ``out`` (empty when there is none)."""
    out = Path(out)
    found = [out / name for name in (*_RUN_FILES, *_RUN_FOLDERS) if (out / name).exists()]
    return found + sorted(out.glob("step_*.pt"))


def clear_run(out: str | Path) -> None:
    """Delete what an earlier run wrote into ``out`` (``previous_run``), nothing else."""
    for path in previous_run(out):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


class Trainer:
    """Trains ``config.model`` on ``config.data``; usable from Python and by ``fastgan train``.

    Args:
        config: the run's settings (defaults filled in by ``TrainConfig.resolved()``).
        dataset: use this dataset instead of building ``config.data`` (items ``(image, label)`` or ``(a, b)``).
        verbose: print the progress line to stderr.

    Attributes: ``nets`` (role -> module), ``ema`` (generator EMA or None), ``step``, ``out`` (run folder).
    """

    def __init__(self, config: TrainConfig, dataset: torch.utils.data.Dataset | None = None, verbose: bool = True):
        self.config = config = config.resolved()
        self.family = FAMILIES[config.model]
        # Joins the torchrun launch, if any: on CUDA each process then takes the GPU of its LOCAL_RANK.
        self.parallel = parallel = Parallel.setup(resolve_device(config.device))
        self.device = parallel.device
        if config.batch_size % parallel.world_size:
            raise ValueError(f"--batch-size {config.batch_size} is the global batch and must split evenly over the "
                             f"{parallel.world_size} processes: use a multiple of {parallel.world_size}")
        self.out = Path(config.out)
        self.verbose = verbose
        self.cyclegan = config.model == "cyclegan"
        torch.manual_seed(config.seed)

        # TrainConfig speaks the command line's language, so dataset errors name flags (--download, --split).
        self.dataset = dataset if dataset is not None else make_dataset(
            config.data, config.data_root, config.image_size, config.channels, config.split, config.download,
            config.seed, cli=True,
        )
        self.conditional = config.conditional
        self.classes = self._class_names() if self.conditional else []
        self.batches = BatchStream(self.dataset, config.batch_size, config.seed, self.device, config.channels_last,
                                   config.workers, parallel.rank, parallel.world_size,
                                   labels=self.conditional is not None)

        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.nets = {
            role: net.to(self.device, memory_format=memory_format)
            for role, net in build_networks(
                config.model, config.image_size, config.channels, config.z_dim, config.ngf, config.ndf,
                config.n_blocks, config.impl, config.conditional, len(self.classes),
            ).items()
        }
        if config.sync_bn and parallel.enabled:
            self.nets = {role: convert_sync_batchnorm(net) for role, net in self.nets.items()}
        parallel.broadcast_parameters(list(self.nets.values()))
        self.generators = [n for r, n in self.nets.items() if r.startswith("G")]
        self.discriminators = [n for r, n in self.nets.items() if r.startswith("D")]
        self.params = {
            "G": [p for net in self.generators for p in net.parameters()],
            "D": [p for net in self.discriminators for p in net.parameters()],
        }
        self.optimizers = {"G": self._optimizer(self.params["G"], config.lr_g),
                           "D": self._optimizer(self.params["D"], config.lr_d)}
        fp16 = config.amp == "fp16"
        self.scalers = {name: torch.amp.GradScaler(self.device.type, enabled=fp16) for name in self.optimizers}
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)

        sampled = self.nets["G_AB" if self.cyclegan else "G"]
        # One critic forward of real and fake together where that changes nothing (``models.per_sample``).
        self.joint_critic = all(per_sample(D) for D in self.discriminators)
        self.ema = EMA(sampled, config.ema_decay) if config.ema_decay > 0 else None
        self.noise = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.pools = [ImagePool(config.pool_size, config.seed + 2 + i) for i in range(2)] if self.cyclegan else []
        if self.cyclegan:
            count = min(_NUM_TRANSLATIONS, len(self.dataset))
            if hasattr(self.dataset, "domain_a"):  # fastgan's two-domain datasets: A images without augmentation
                self.fixed_input = self.dataset.domain_a(count).to(self.device)
            else:
                self.fixed_input = torch.stack([self.dataset[i][0] for i in range(count)]).to(self.device)
        else:
            self.fixed_input = torch.randn(config.num_samples, config.z_dim, generator=self.noise, device=self.device)
        self._ones: dict[torch.dtype, torch.Tensor] = {}
        self.graphs: dict[tuple, GraphedStep] = {}  # cuda_graphs: one captured step per kind of step
        self._graph_pool = None
        # Conditional sample grids: the classes in turn, one per column of rows of len(classes) (fixed, not drawn).
        self.fixed_labels = torch.arange(config.num_samples, device=self.device) % len(self.classes) \
            if self.conditional else None
        self.step = 0
        self.images_seen = 0
        self._lr_scale = None  # the learning-rate factor last written into the optimisers
        self._apply_lr_schedule()
        self.stop_requested = False  # set by request_stop(): fit() saves and returns after the current step

    # -- construction helpers ------------------------------------------------------------------------------------

    def _optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """Fused Adam (one kernel per step, its step counters on the device: no host read) or the foreach RMSprop
        (PyTorch has no fused one; capturable on CUDA so its counters stay there too). Under CUDA graphs the learning
        rate is a device tensor, so the schedule can change it between replays."""
        graphs = self.config.cuda_graphs
        lr = torch.tensor(lr, device=self.device) if graphs else lr
        if self.family.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr, foreach=True, capturable=self.device.type == "cuda")
        # capturable as well under graphs: PyTorch refuses to capture an optimiser step that is not marked so.
        return torch.optim.Adam(params, lr=lr, betas=self.config.betas, fused=True, capturable=graphs)

    def _lr_factor(self, step: int) -> float:
        """1 until ``decay_start * steps``, then linearly down to 0 at ``steps`` (CycleGAN's schedule)."""
        start = self.config.decay_start * self.config.steps
        if step < start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / max(self.config.steps - start, 1.0))

    def _apply_lr_schedule(self) -> None:
        """Set the learning rates of step ``self.step``: a pure function of the step (nothing to checkpoint), written
        only when it changes (a tensor learning rate is filled in place: no host read, graph-safe)."""
        scale = self._lr_factor(self.step)
        if scale == self._lr_scale:
            return
        self._lr_scale = scale
        for name, optimizer in self.optimizers.items():
            lr = scale * (self.config.lr_g if name == "G" else self.config.lr_d)
            for group in optimizer.param_groups:
                if not self.config.cuda_graphs:
                    group["lr"] = lr
                elif isinstance(group["lr"], torch.Tensor) and group["lr"].is_cuda:
                    group["lr"].fill_(lr)  # in place: a captured optimiser step reads this very tensor
                else:  # before any capture (construction, a loaded checkpoint): a device tensor
                    group["lr"] = torch.tensor(lr, device=self.device)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # A CUDA graph replays the casts it captured: autocast's cache of cast weights would go stale.
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=not self.config.cuda_graphs)

    def _z(self, n: int) -> torch.Tensor:
        """This process's ``n`` rows of the global batch's noise (every process draws all of it)."""
        world = self.parallel.world_size
        return self.parallel.local(torch.randn(n * world, self.config.z_dim, generator=self.noise, device=self.device))

    # -- class-conditional helpers (identity for unconditional runs: no extra draws, the same calls) ----------------

    def _class_names(self) -> list[str]:
        """The dataset's class names; ValueError naming --conditional when its items are not all labelled."""
        labels, classes = getattr(self.dataset, "labels", None), list(getattr(self.dataset, "classes", []) or [])
        if labels is None or len(classes) < 2 or bool((torch.as_tensor(labels) < 0).any()):
            data = self.config.data
            why = ("images directly in --data-root have no class: put every image in a subfolder named by its class"
                   if data == "folder" and labels is not None else f"--data {data} has no class labels")
            raise ValueError(f"--conditional {self.conditional}: {why}; conditional training needs labelled data "
                             "(digits, mnist, fashion-mnist, cifar10, or --data folder with one subfolder per class)")
        return classes

    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next real images and, for conditional runs, their labels."""
        batch = next(self.batches)
        return batch if self.conditional else (batch, None)

    def _fake_labels(self, n: int) -> torch.Tensor | None:
        """Labels of the next fakes, uniform over the classes from the checkpointed noise generator (None if
        unconditional)."""
        if not self.conditional:
            return None
        world = self.parallel.world_size  # every process draws the global batch's labels and takes its slice
        return self.parallel.local(torch.randint(len(self.classes), (n * world,), generator=self.noise,
                                                 device=self.device))

    @staticmethod
    def _generate(G: nn.Module, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return G(z) if labels is None else G(z, labels)

    def _critic(self, D: nn.Module, x: torch.Tensor, labels: torch.Tensor | None):
        """(logits, class logits or None): the projection discriminator takes the labels, acgan's classifies."""
        if self.conditional == "projection":
            return D(x, labels), None
        if self.conditional == "acgan":
            return D(x)
        return D(x), None

    def _critic_pair(self, D: nn.Module, real, real_labels, fake, fake_labels):
        """``_critic`` of real and of fake images: one forward of both when the discriminators treat samples
        independently (the WGAN(-GP) critics, CycleGAN's instance-normalised ones: no batch norm), the same numbers
        in half the kernel launches. Not when R1 differentiates the real forward alone (the joint one would double
        that backward's work)."""
        if not self.joint_critic or real.requires_grad:
            return self._critic(D, real, real_labels), self._critic(D, fake, fake_labels)
        labels = None if real_labels is None else torch.cat((real_labels, fake_labels))
        # In fake's dtype: under autocast the first layer casts real to it anyway (cat would promote fake instead).
        logits, classes = self._critic(D, torch.cat((real.to(fake.dtype), fake)), labels)
        # split, not two slices: its backward is one cat where two slices' make two zero-filled copies and an add
        sizes = [real.shape[0], fake.shape[0]]
        real_logits, fake_logits = logits.split(sizes)
        real_classes, fake_classes = (None, None) if classes is None else classes.split(sizes)
        return (real_logits, real_classes), (fake_logits, fake_classes)

    def _logits(self, D: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The real/fake logits alone (what the gradient penalty differentiates)."""
        return self._critic(D, x, labels)[0]

    @staticmethod
    def _class_loss(class_logits: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor | None:
        """acgan's auxiliary cross-entropy (float32), None for other runs."""
        return None if class_logits is None else F.cross_entropy(class_logits.float(), labels)

    # -- one step ------------------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, torch.Tensor]:
        """One generator update (and its discriminator updates); returns the losses as device tensors (under CUDA
        graphs the graph's own outputs, overwritten by the next step: ``LossMeter`` copies them)."""
        losses = self._cyclegan_step() if self.cyclegan else self._gan_step()
        self.step += 1
        self._apply_lr_schedule()
        if self.ema is not None:
            self.ema.update(self.nets["G_AB" if self.cyclegan else "G"], self.step)
        return losses

    def _run(self, key: tuple, update, *args) -> dict[str, torch.Tensor]:
        """``update(*args)`` eagerly, or under ``cuda_graphs`` replayed from the graph captured for ``key`` (one
        graph per kind of step; they share one memory pool, as they never run at the same time)."""
        if not self.config.cuda_graphs:
            return update(*args)
        if key not in self.graphs:
            if self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
            self.graphs[key] = GraphedStep(update, pool=self._graph_pool, generators=(self.noise,))
        return self.graphs[key](*args)

    def _update(self, name: str, loss: torch.Tensor) -> None:
        """Backward, gradients averaged over the processes, optimiser step for network group ``name`` through its
        GradScaler."""
        optimizer, scaler = self.optimizers[name], self.scalers[name]
        loss = scaler.scale(loss)
        # The seed gradient, made once (backward() would fill a new 1 every step); autograd never writes into it.
        if loss.dtype not in self._ones:
            self._ones[loss.dtype] = torch.ones((), dtype=loss.dtype, device=loss.device)
        loss.backward(self._ones[loss.dtype])
        self.parallel.all_reduce_gradients(self.params[name])
        scaler.step(optimizer)
        scaler.update()

    def _gan_step(self) -> dict[str, torch.Tensor]:
        n_critic = self.config.n_critic
        for k in range(n_critic):
            real, real_labels = self._real_batch()
            last = k == n_critic - 1
            # Lazy R1 (StyleGAN2): every r1_every-th critic step, counted over the whole run (so resume keeps it).
            r1 = self.config.r1_gamma > 0 and (self.step * n_critic + k) % self.config.r1_every == 0
            losses = self._run(("gan", last, r1), self._critic_update, real, real_labels, last, r1)
            self.images_seen += real.shape[0] * self.parallel.world_size
        return losses

    def _critic_update(
        self, real: torch.Tensor, real_labels: torch.Tensor | None, last: bool, r1: bool
    ) -> dict[str, torch.Tensor]:
        """One discriminator update on ``real`` and fresh fakes, with its penalties; when ``last``, then the generator
        update on the same fakes. Device work only (it may be captured as a CUDA graph)."""
        config, family = self.config, self.family
        G, D = self.nets["G"], self.nets["D"]
        # The last critic step's fakes keep their graph: the generator step reuses them (one G forward fewer).
        with torch.set_grad_enabled(last), self._autocast():
            z = self._z(real.shape[0])
            fake_labels = self._fake_labels(real.shape[0])
            fake = self._generate(G, z, fake_labels)
        self.optimizers["D"].zero_grad(set_to_none=True)
        if r1:
            real = real.detach().requires_grad_(True)  # R1 differentiates the critic's loss forward on real
        scaler = self.scalers["D"] if self.scalers["D"].is_enabled() else None
        with self._autocast():
            (real_logits, class_real), (fake_logits, class_fake) = self._critic_pair(D, real, real_labels,
                                                                                     fake.detach(), fake_labels)
            loss_d = d_loss(real_logits, fake_logits, family.loss, impl=config.impl)
        losses = {"loss_d": loss_d}
        if class_real is not None:
            losses["loss_class"] = self._class_loss(class_real, real_labels) + self._class_loss(class_fake, fake_labels)
            loss_d = loss_d + losses["loss_class"]
        if config.gp_weight > 0:
            world = self.parallel.world_size
            eps = self.parallel.local(torch.rand(real.shape[0] * world, generator=self.noise, device=self.device))
            critic = D if not self.conditional else functools.partial(self._logits, D, labels=real_labels)
            with self._autocast():
                penalty = gradient_penalty(critic, real.detach(), fake.detach(), weight=config.gp_weight, eps=eps,
                                           impl=config.impl, scaler=scaler)
            losses["penalty"] = penalty
            loss_d = loss_d + penalty
        if r1:
            with self._autocast():
                penalty = r1_penalty(real_logits, real, config.r1_gamma, impl=config.impl, scaler=scaler)
            losses["r1"] = penalty
            loss_d = loss_d + (penalty * config.r1_every if config.r1_every > 1 else penalty)
        self._update("D", loss_d)
        if config.clip is not None:
            with torch.no_grad():
                torch._foreach_clamp_min_(list(D.parameters()), -config.clip)
                torch._foreach_clamp_max_(list(D.parameters()), config.clip)
        if not last:
            return losses
        D.requires_grad_(False)  # the generator step needs gradients through D, not for D's weights
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self._autocast():
            out_fake, class_fake = self._critic(D, fake, fake_labels)
            loss_g = g_loss(out_fake, family.loss, impl=config.impl)
            if class_fake is not None:
                loss_g = loss_g + self._class_loss(class_fake, fake_labels)
        self._update("G", loss_g)
        D.requires_grad_(True)
        losses["loss_g"] = loss_g
        return losses

    def _cyclegan_step(self) -> dict[str, torch.Tensor]:
        real_a, real_b = next(self.batches)
        losses = self._run(("cyclegan",), self._cyclegan_update, real_a, real_b)
        self.images_seen += real_a.shape[0] * self.parallel.world_size
        return losses

    def _cyclegan_update(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both generators' update, then both discriminators' on fakes through the image pools."""
        config, kind, impl = self.config, self.family.loss, self.config.impl
        G_AB, G_BA, D_A, D_B = (self.nets[r] for r in ("G_AB", "G_BA", "D_A", "D_B"))
        for D in self.discriminators:
            D.requires_grad_(False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self._autocast():
            fake_b, fake_a = G_AB(real_a), G_BA(real_b)
            loss_adv = g_loss(D_B(fake_b), kind, impl=impl) + g_loss(D_A(fake_a), kind, impl=impl)
            loss_cycle = config.lambda_cycle * (
                F.l1_loss(G_BA(fake_b).float(), real_a.float()) + F.l1_loss(G_AB(fake_a).float(), real_b.float())
            )
            loss_g = loss_adv + loss_cycle
            losses = {"loss_g": loss_adv, "loss_cycle": loss_cycle}
            if config.lambda_identity > 0:
                loss_idt = config.lambda_cycle * config.lambda_identity * (
                    F.l1_loss(G_AB(real_b).float(), real_b.float()) + F.l1_loss(G_BA(real_a).float(), real_a.float())
                )
                loss_g = loss_g + loss_idt
                losses["loss_identity"] = loss_idt
        self._update("G", loss_g)
        for D in self.discriminators:
            D.requires_grad_(True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        # The pools hold global batches (the same on every process: rank 0's checkpoint has them all).
        parallel = self.parallel
        pooled_a = parallel.local(self.pools[0].query(parallel.gather(fake_a.detach())))
        pooled_b = parallel.local(self.pools[1].query(parallel.gather(fake_b.detach())))
        with self._autocast():
            # Halved, as in the paper's code: slows the discriminators relative to the generators.
            (on_real_a, _), (on_fake_a, _) = self._critic_pair(D_A, real_a, None, pooled_a, None)
            (on_real_b, _), (on_fake_b, _) = self._critic_pair(D_B, real_b, None, pooled_b, None)
            loss_d = 0.5 * (d_loss(on_real_a, on_fake_a, kind, impl=impl) + d_loss(on_real_b, on_fake_b, kind,
                                                                                    impl=impl))
        self._update("D", loss_d)
        losses["loss_d"] = loss_d
        return losses

    # -- the loop ------------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Make ``fit`` return after the step in progress, with a checkpoint (safe to call from a signal handler)."""
        self.stop_requested = True

    def fit(self, steps: int | None = None) -> dict[str, float]:
        """Train until ``steps`` (default ``config.steps``) generator steps in total; return the last metrics row.

        Writes ``config.toml`` first; logs every ``log_every`` steps, writes a sample grid every ``sample_every`` and
        ``last.pt`` every ``checkpoint_every`` steps and at the end, and also when ``request_stop()`` was called (then
        it returns after the current step, ``stop_requested`` still set). Under torchrun only rank 0 writes, the
        losses are the means over all processes, and a stop requested in one process stops all after the same step.
        """
        config, parallel = self.config, self.parallel
        main = parallel.is_main
        total = config.steps if steps is None else steps
        if main:
            self.save_config()
        quality = self._quality_monitor() if config.eval_every and main else None
        writer = MetricsWriter(self.out, extra_fields=QUALITY_FIELDS if quality else ()) if main else None
        progress = Progress(total, enabled=self.verbose and main, initial=self.step, world_size=parallel.world_size)
        meter = LossMeter()
        row: dict[str, float] = {}
        tick, tick_step, tick_images = time.perf_counter(), self.step, self.images_seen
        stop = parallel.any(self.stop_requested)
        try:
            for net in self.nets.values():
                net.train()
            while self.step < total and not stop:
                meter.add(self.train_step())
                stop = parallel.any(self.stop_requested)
                progress.advance(self.step)
                if self.step % config.log_every == 0 or self.step == total:
                    now = time.perf_counter()
                    elapsed = max(now - tick, 1e-9)
                    row = {"step": self.step, **meter.mean(parallel.average), "lr_g": self._lr_scale * config.lr_g,
                           "steps_per_s": (self.step - tick_step) / elapsed,
                           "images_per_s": (self.images_seen - tick_images) / elapsed}
                    if main:
                        writer.write(row)
                    progress.update(self.step, row)
                    tick, tick_step, tick_images = now, self.step, self.images_seen
                if main and (self.step % config.sample_every == 0 or self.step == total):
                    self.save_samples()
                if quality is not None and (self.step % config.eval_every == 0 or self.step == total):
                    scores = quality(self.sampling_generator(), config.z_dim, self.device, config.eval_num)
                    writer.write({"step": self.step, **scores})
                if main and (self.step % config.checkpoint_every == 0 or self.step == total or stop):
                    self.save()
        finally:
            progress.close()
            if writer is not None:
                writer.close()
        parallel.barrier()  # rank 0's last checkpoint is on disk when fit returns, on every process
        self.stop_requested = stop
        return row

    def _quality_monitor(self) -> QualityMonitor:
        """What ``--eval-every`` scores with (the real images and LeNet of ``fastgan eval --features lenet``)."""
        return QualityMonitor(self.config.data, self.config.data_root, self.config.seed)

    # -- samples -------------------------------------------------------------------------------------------------

    def sampling_generator(self) -> nn.Module:
        """The network samples come from: the EMA generator when kept, else the generator (G_AB for cyclegan)."""
        return self.ema.module if self.ema is not None else self.nets["G_AB" if self.cyclegan else "G"]

    @torch.no_grad()
    def save_samples(self) -> Path:
        """Write ``samples/step_XXXXXXX.png`` (fixed noise, or A images beside their translations)."""
        G = self.sampling_generator()
        was_training = G.training
        G.eval()
        images = self._generate(G, self.fixed_input, self.fixed_labels).float()
        G.train(was_training)
        if self.cyclegan:
            images = torch.stack([self.fixed_input.float(), images], 1).flatten(0, 1)
            nrow = 2
        else:
            nrow = len(self.classes) or None  # conditional: one column per class
        return save_image_grid(images, self.out / "samples" / f"step_{self.step:07d}.png", nrow=nrow)

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def save_config(self) -> Path:
        """Write the resolved settings to ``config.toml`` in the run folder (``fastgan train --config`` reads it)."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / CONFIG_FILE
        with atomic_writer(path) as handle:
            handle.write(config_toml(self.config).encode())
        return path

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: networks, EMA, optimisers, scalers, RNGs, data order, counters."""
        rng = {"torch": torch.get_rng_state(), "noise": self.noise.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "world_size": self.parallel.world_size,
            "step": self.step,
            "images_seen": self.images_seen,
            "nets": {role: net.state_dict() for role, net in self.nets.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "scalers": {name: scaler.state_dict() for name, scaler in self.scalers.items()},
            "rng": rng,
            "data": self.batches.state_dict(),
            "pools": [pool.state_dict() for pool in self.pools],
            "fixed_input": self.fixed_input.cpu(),
            "classes": self.classes,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unsupported checkpoint format {state.get('format')!r} (expected {CHECKPOINT_FORMAT})")
        for role, net in self.nets.items():
            net.load_state_dict(state["nets"][role])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        for name in self.optimizers:
            self.optimizers[name].load_state_dict(state["optimizers"][name])
            self.scalers[name].load_state_dict(state["scalers"][name])
        torch.set_rng_state(state["rng"]["torch"])
        self.noise.set_state(state["rng"]["noise"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.batches.load_state_dict(state["data"])
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.parallel.world_size:
            warnings.warn(
                f"resuming a run of {saved_world} process(es) with {self.parallel.world_size}: the data order each "
                "process sees changes (so do batch-norm statistics without --sync-bn, and float summation order); "
                "the global batches are the same, but the run will not be bit-identical to an uninterrupted one",
                stacklevel=2,
            )
        for pool, pool_state in zip(self.pools, state["pools"]):
            pool.load_state_dict(pool_state, self.device)
        self.fixed_input = state["fixed_input"].to(self.device)
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self._lr_scale = None  # the loaded optimisers hold the saved learning rates: set this step's
        self._apply_lr_schedule()

    def save(self) -> Path:
        """Write ``last.pt`` atomically (and ``step_XXXXXXX.pt`` every ``keep_every`` steps); return its path."""
        state = self.state_dict()
        path = save_checkpoint(state, self.out / LAST)
        if self.config.keep_every and self.step % self.config.keep_every == 0:
            save_checkpoint(state, self.out / f"step_{self.step:07d}.pt")
        return path

    @classmethod
    def resume(
        cls, path: str | Path, verbose: bool = True, dataset: torch.utils.data.Dataset | None = None, **settings
    ) -> Trainer:
        """Rebuild the run saved at ``path`` (a .pt file or a run folder) and restore its state.

        ``settings`` (TrainConfig fields) equal to the saved ones are accepted; of the others only those in
        ``RESUMABLE`` (steps, out, device, impl, workers, intervals, data_root, download: what does not change what
        is trained) may differ, else ValueError naming them. The run continues in ``out``, by default the folder of
        the checkpoint. ``dataset`` replaces the configured data as in ``__init__``.
        """
        path = Path(path)
        state = load_checkpoint(path)
        config = TrainConfig.from_dict(state["config"])
        saved = config.to_dict()
        given = TrainConfig(**settings).to_dict()  # the same plain form (tuples as lists) as the saved config
        changed = sorted(k for k in settings if given[k] != saved[k] and k not in RESUMABLE)
        if changed:
            flags = ", ".join(f"{k} (--{k.replace('_', '-')} {saved[k]!r})" for k in changed)
            raise ValueError(f"cannot change {flags} when resuming: the checkpoint fixes what is trained; only "
                             f"{', '.join(sorted(RESUMABLE))} may change")
        settings.setdefault("out", str(path if path.is_dir() else path.parent))
        for key, value in settings.items():
            setattr(config, key, value)
        trainer = cls(config, dataset=dataset, verbose=verbose)
        trainer.load_state_dict(state)
        return trainer
