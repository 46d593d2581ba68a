"""The trainer: every family trains a few steps on CPU, resume is exact, checkpoints are atomic, AMP, EMA, pools."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fastgan.data import save_images
from fastgan.train import EMA, ImagePool, LossMeter, Progress, TrainConfig, Trainer, load_checkpoint, save_checkpoint
from fastgan.train.batches import BatchStream
from fastgan.train.config import read_config_file

# Tiny settings per family: a few seconds of CPU each.
TINY = {
    "gan": dict(model="gan", image_size=16, z_dim=16),
    "dcgan": dict(model="dcgan", image_size=16, ngf=8, ndf=8, z_dim=16),
    "wgan": dict(model="wgan", image_size=16, ngf=8, ndf=8, z_dim=16, n_critic=2),
    "wgan-gp": dict(model="wgan-gp", image_size=16, ngf=8, ndf=8, z_dim=16, n_critic=2),
    "cyclegan": dict(model="cyclegan", data="unpaired", image_size=32, ngf=4, ndf=4, n_blocks=1, pool_size=3),
}


@pytest.fixture(scope="module")
def unpaired_root(tmp_path_factory) -> Path:
    """A CycleGAN folder: 6 noisy dark images in trainA, 5 bright ones in trainB."""
    root = tmp_path_factory.mktemp("unpaired")
    g = torch.Generator().manual_seed(0)
    save_images(torch.rand(6, 3, 32, 32, generator=g) - 1.0, root / "trainA")
    save_images(torch.rand(5, 3, 32, 32, generator=g), root / "trainB")
    return root


def config_for(family: str, out: Path, unpaired_root: Path, **changes) -> TrainConfig:
    settings = dict(data="digits", batch_size=4, steps=4, impl="ref", num_samples=4, log_every=2, sample_every=2,
                    checkpoint_every=2, seed=3, ema_decay=0.9, workers=0)
    settings.update(TINY[family])
    if family == "cyclegan":
        settings["data_root"] = str(unpaired_root)
        settings["batch_size"] = 2
    settings.update(changes)
    return TrainConfig(out=str(out), **settings)


def _state_tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every parameter, buffer, EMA weight and optimiser state tensor of a trainer, by name."""
    out = {}
    for role, net in trainer.nets.items():
        out.update({f"{role}.{k}": v for k, v in net.state_dict().items()})
    if trainer.ema is not None:
        out.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    for name, opt in trainer.optimizers.items():
        for index, state in opt.state_dict()["state"].items():
            out.update({f"opt{name}.{index}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


@pytest.mark.parametrize("family", list(TINY))
def test_every_family_trains_and_writes_its_outputs(family, tmp_path, unpaired_root):
    trainer = Trainer(config_for(family, tmp_path, unpaired_root), verbose=False)
    before = {k: v.clone() for k, v in _state_tensors(trainer).items()}
    row = trainer.fit()
    assert trainer.step == 4
    after = _state_tensors(trainer)
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert any(k.startswith(("G", "G_AB")) for k in changed) and any(k.startswith("D") for k in changed)
    assert all(np.isfinite(v) for k, v in row.items())
    expected = {"loss_d", "loss_g"} | ({"penalty"} if family == "wgan-gp" else set())
    expected |= {"loss_cycle", "loss_identity"} if family == "cyclegan" else set()
    assert expected <= set(row)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("step,")
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    state = load_checkpoint(tmp_path)
    assert state["step"] == 4 and state["config"]["model"] == family


@pytest.mark.parametrize("family", list(TINY))
def test_resume_reproduces_an_uninterrupted_run_exactly(family, tmp_path, unpaired_root):
    # steps=5 with checkpoints every 2: the straight run also crosses an epoch of the 11-image cyclegan data.
    straight = Trainer(config_for(family, tmp_path / "straight", unpaired_root, steps=5), verbose=False)
    straight.fit()
    first = Trainer(config_for(family, tmp_path / "split", unpaired_root, steps=5), verbose=False)
    first.fit(3)
    first.save()
    del first
    resumed = Trainer.resume(tmp_path / "split" / "last.pt", verbose=False)
    assert resumed.step == 3
    resumed.fit()
    expected, got = _state_tensors(straight), _state_tensors(resumed)
    assert expected.keys() == got.keys() and len(expected) > 0
    mismatched = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not mismatched, f"resumed run differs in {mismatched[:5]}"
    assert resumed.batches.state_dict() == straight.batches.state_dict()
    assert torch.equal(straight.noise.get_state(), resumed.noise.get_state())


def test_resume_is_exact_with_channels_last(tmp_path, unpaired_root):
    """--channels-last with fused Adam: the checkpoint must keep the optimiser state's strides, because the fused step
    pairs a parameter's elements with its state's by memory order (a contiguous state for channels_last weights is
    silently wrong, not an error)."""
    runs = {}
    for name, stop in (("straight", None), ("split", 3)):
        config = config_for("dcgan", tmp_path / name, unpaired_root, steps=5, channels_last=True)
        trainer = Trainer(config, verbose=False)
        trainer.fit(stop)
        runs[name] = trainer
    runs["split"].save()
    resumed = Trainer.resume(tmp_path / "split" / "last.pt", verbose=False)
    assert resumed.step == 3
    weight = next(p for p in resumed.nets["D"].parameters() if p.dim() == 4 and p.shape[1] > 1)
    state = resumed.optimizers["D"].state[weight]["exp_avg"]
    assert weight.is_contiguous(memory_format=torch.channels_last) and state.stride() == weight.stride()
    resumed.fit()
    expected, got = _state_tensors(runs["straight"]), _state_tensors(resumed)
    assert expected.keys() == got.keys() and len(expected) > 0
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []


def test_resume_is_exact_when_dataloader_workers_decode_the_images(tmp_path, unpaired_root):
    """Worker processes prefetch batches and augment (crop, flip): neither may change what a resumed run sees."""
    straight = Trainer(config_for("cyclegan", tmp_path / "straight", unpaired_root, workers=2), verbose=False)
    straight.fit()
    first = Trainer(config_for("cyclegan", tmp_path / "split", unpaired_root, workers=2), verbose=False)
    first.fit(2)  # mid-epoch (3 batches of 2 per epoch), with the workers' prefetched batches discarded
    resumed = Trainer.resume(tmp_path / "split", verbose=False, workers=1)  # the worker count may change
    resumed.fit()
    expected, got = _state_tensors(straight), _state_tensors(resumed)
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []


def test_cyclegan_defaults_to_the_embedded_digit_styles_and_the_papers_batch_of_one():
    # Training on them: tests/test_cli.py::test_cyclegan_runs_on_the_embedded_data_and_samples_from_anywhere.
    config = TrainConfig(model="cyclegan").resolved()
    assert (config.data, config.batch_size, config.channels, config.image_size) == ("digit-styles", 1, 3, 32)
    assert config.out == "runs/cyclegan-digit-styles"


def test_the_run_folder_keeps_the_resolved_config(tmp_path, unpaired_root):
    config = config_for("wgan-gp", tmp_path, unpaired_root, steps=1, extra={"note": "a \"b\"", "k": 3})
    trainer = Trainer(config, verbose=False)
    trainer.fit()
    kept = read_config_file(tmp_path / "config.toml")
    assert kept["lr_g"] == 1e-4 and kept["betas"] == (0.0, 0.9)  # the family's defaults, resolved
    assert TrainConfig(**kept).to_dict() == trainer.config.to_dict()


def test_request_stop_ends_fit_after_the_step_with_a_checkpoint(tmp_path, unpaired_root):
    trainer = Trainer(config_for("dcgan", tmp_path, unpaired_root, steps=50, checkpoint_every=50), verbose=False)
    step = trainer.train_step

    def step_then_stop():
        losses = step()
        if trainer.step == 2:
            trainer.request_stop()
        return losses

    trainer.train_step = step_then_stop
    trainer.fit()
    assert trainer.step == 2 and trainer.stop_requested
    assert load_checkpoint(tmp_path)["step"] == 2


def test_progress_is_a_tqdm_bar_on_a_terminal_and_plain_lines_elsewhere():
    pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain, terminal = io.StringIO(), Terminal()
    for stream in (plain, terminal):
        progress = Progress(4, stream=stream)
        for step in range(1, 5):
            progress.advance(step)
            if step % 2 == 0:
                progress.update(step, {"step": step, "loss_d": 0.5, "steps_per_s": 2.0, "images_per_s": 8.0})
        progress.close()
    lines = plain.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["step 2/4", "step 4/4"] and "loss_d 0.5" in lines[-1]
    assert "\r" not in plain.getvalue()
    drawn = terminal.getvalue()
    assert "\r" in drawn and "4/4" in drawn and "loss_d 0.5" in drawn and "step/s" in drawn  # tqdm's redrawn bar


def test_a_different_seed_gives_a_different_run(tmp_path, unpaired_root):
    runs = [Trainer(config_for("dcgan", tmp_path / str(s), unpaired_root, seed=s, steps=2), verbose=False) for s in
            (1, 2)]
    for run in runs:
        run.fit()
    a, b = (_state_tensors(run) for run in runs)
    weights = [k for k in a if k.startswith("G.") and k.endswith("weight")]
    assert weights, f"no generator weight among {list(a)[:8]}"
    assert all(not torch.equal(a[k], b[k]) for k in weights)


def test_wgan_clips_every_critic_weight(tmp_path, unpaired_root):
    trainer = Trainer(config_for("wgan", tmp_path, unpaired_root, steps=2, clip=0.005), verbose=False)
    trainer.fit()
    assert max(p.abs().max().item() for p in trainer.nets["D"].parameters()) <= 0.005
    assert isinstance(trainer.optimizers["D"], torch.optim.RMSprop)
    assert trainer.optimizers["D"].param_groups[0]["lr"] == 5e-5


def test_family_defaults(tmp_path, unpaired_root):
    gp = Trainer(config_for("wgan-gp", tmp_path, unpaired_root, n_critic=None), verbose=False)
    assert gp.config.n_critic == 5 and gp.config.gp_weight == 10.0
    group = gp.optimizers["D"].param_groups[0]
    assert isinstance(gp.optimizers["D"], torch.optim.Adam) and group["lr"] == 1e-4 and group["betas"] == (0.0, 0.9)
    gp.fit(1)
    assert gp.images_seen == 5 * 4  # five critic steps of batch 4 per generator step


def test_cyclegan_learning_rate_decays_linearly_over_the_second_half(tmp_path, unpaired_root):
    trainer = Trainer(config_for("cyclegan", tmp_path, unpaired_root, steps=8), verbose=False)
    lrs = []
    for _ in range(8):
        lrs.append(trainer.optimizers["G"].param_groups[0]["lr"])
        trainer.train_step()
    assert lrs[:4] == [2e-4] * 4
    assert lrs[4:] == pytest.approx([2e-4 * (1 - k / 4) for k in range(4)])
    assert trainer.optimizers["G"].param_groups[0]["lr"] == 0.0


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("family", ["dcgan", "wgan-gp"])
def test_amp_trains_with_finite_losses(amp, family, tmp_path, unpaired_root):
    trainer = Trainer(config_for(family, tmp_path, unpaired_root, amp=amp, steps=2, channels_last=True),
                      verbose=False)
    row = trainer.fit()
    assert all(np.isfinite(v) for v in row.values())
    assert trainer.scalers["D"].is_enabled() == (amp == "fp16")
    assert all(p.dtype == torch.float32 for net in trainer.nets.values() for p in net.parameters())
    conv = next(p for p in trainer.nets["G"].parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_checkpoints_are_atomic(tmp_path, monkeypatch):
    path = save_checkpoint({"config": {"a": 1}, "nets": {}}, tmp_path / "last.pt")
    original = path.read_bytes()

    def crash(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"config": {"a": 2}, "nets": {}}, path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["config"] == {"a": 1}


def test_loading_a_corrupt_or_missing_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt is not a fastgan checkpoint") as info:
        load_checkpoint(tmp_path / "bad.pt")
    assert "weights_only" not in str(info.value) and "issue" not in str(info.value)  # not PyTorch's advice
    torch.save({"weight": torch.zeros(1)}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="weights.pt is not a fastgan checkpoint"):
        load_checkpoint(tmp_path / "weights.pt")


def test_keep_every_keeps_periodic_checkpoints(tmp_path, unpaired_root):
    Trainer(config_for("dcgan", tmp_path, unpaired_root, keep_every=2), verbose=False).fit()
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["last.pt", "step_0000002.pt", "step_0000004.pt"]


def test_resume_refuses_to_change_what_is_trained(tmp_path, unpaired_root):
    trainer = Trainer(config_for("dcgan", tmp_path, unpaired_root, steps=1), verbose=False)
    trainer.fit()
    with pytest.raises(ValueError, match="cannot change model"):
        Trainer.resume(tmp_path, model="wgan")
    with pytest.raises(ValueError, match=r"cannot change lr_g \(--lr-g"):
        Trainer.resume(tmp_path, lr_g=1.0)
    resumed = Trainer.resume(tmp_path, model="dcgan", steps=3, log_every=1)  # same model, and resumable settings
    assert (resumed.step, resumed.config.steps) == (1, 3)


def test_ema_follows_the_weights():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.5)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=100)  # decay = min(0.5, 101 / 110) = 0.5
    torch.testing.assert_close(ema.module.weight, 0.5 * before + 0.5 * model.weight)
    assert not ema.module.weight.requires_grad


def test_image_pool_fills_then_swaps_and_resumes():
    pool = ImagePool(size=3, seed=0)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returned as given
    state = pool.state_dict()
    new = torch.full((50, 1, 1, 1), 9.0)
    out = pool.query(new)
    swapped = (out != 9.0).sum().item()
    assert 0 < swapped < 50  # about half come from the history
    again = ImagePool(size=3, seed=123)
    again.load_state_dict(state, torch.device("cpu"))
    assert torch.equal(again.query(new), out)
    assert torch.equal(ImagePool(size=0).query(new), new)


def test_batch_stream_is_a_resumable_permutation():
    dataset = [(torch.full((1, 2, 2), float(i)), i) for i in range(10)]
    stream = BatchStream(dataset, 3, seed=0, device=torch.device("cpu"))
    epoch0 = torch.cat([next(stream)[:, 0, 0, 0] for _ in range(3)])
    assert len(set(epoch0.tolist())) == 9  # three full batches, no repeats, the tenth image dropped
    state = stream.state_dict()
    following = [next(stream) for _ in range(4)]
    other = BatchStream(dataset, 3, seed=0, device=torch.device("cpu"))
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(following, [next(other) for _ in range(4)]))
    with pytest.raises(ValueError, match="fewer than one batch"):
        BatchStream(dataset, 11, seed=0, device=torch.device("cpu"))


def test_loss_meter_means():
    meter = LossMeter()
    meter.add({"a": torch.tensor(1.0)})
    meter.add({"a": torch.tensor(3.0)})
    assert meter.mean() == {"a": 2.0}
    assert meter.mean() == {}


def test_loss_meter_averages_each_loss_over_the_steps_that_made_it_and_copies_its_inputs():
    meter = LossMeter()
    replayed = torch.tensor(1.0)  # a CUDA graph's output: the same tensor, overwritten by every replay
    meter.add({"a": replayed, "r1": torch.tensor(4.0)})
    replayed.fill_(3.0)
    meter.add({"a": replayed})
    replayed.fill_(100.0)
    assert meter.mean() == {"a": 2.0, "r1": 4.0}


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that read a tensor's value on the host (``.item()``, ``bool(t)``, ``float(t)``: on a GPU each
    waits for the device)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


STEP_OPTIONS = {
    "gan": {}, "dcgan": {}, "wgan": {}, "wgan-gp": {}, "cyclegan": {},
    "dcgan-ema-decay": dict(model="dcgan", decay_start=0.0, ema_decay=0.9),
    "dcgan-lazy-r1": dict(model="dcgan", r1_gamma=1.0, r1_every=2),
    "dcgan-fp16": dict(model="dcgan", amp="fp16"),
    "dcgan-r1-fp16": dict(model="dcgan", amp="fp16", r1_gamma=1.0),
    "wgan-gp-fp16": dict(model="wgan-gp", amp="fp16"),
    "wgan-gp-bf16-channels-last": dict(model="wgan-gp", amp="bf16", channels_last=True),
    "dcgan-acgan": dict(model="dcgan", conditional="acgan"),
    "wgan-gp-projection": dict(model="wgan-gp", conditional="projection"),
}


@pytest.mark.parametrize("name", list(STEP_OPTIONS))
def test_steady_state_steps_read_nothing_back_from_the_device(name, tmp_path, unpaired_root):
    """No host synchronisation in a training step, for every family and option: fused / capturable optimisers, the
    penalties unscaled by the GradScaler's tensor, losses kept on the device (read only when logging)."""
    changes = dict(STEP_OPTIONS[name])
    family = changes.pop("model", name)
    trainer = Trainer(config_for(family, tmp_path, unpaired_root, steps=8, **changes), verbose=False)
    trainer.train_step()  # the first step creates the optimiser state
    # A DataLoader draws its epoch's seed from a CPU generator with .item(): host data, never a wait on the device.
    make_loader = trainer.batches._epoch_loader

    def loader_outside_the_count():
        with torch.utils._python_dispatch._disable_current_modes():
            return make_loader()

    trainer.batches._epoch_loader = loader_outside_the_count
    meter = LossMeter()
    with _HostReads() as counter:
        for _ in range(3):
            meter.add(trainer.train_step())
    assert counter.reads == 0
    assert {"loss_d", "loss_g"} <= set(meter.mean())  # (float16 losses may be inf while the scaler backs off)
    assert all(p.isfinite().all() for net in trainer.nets.values() for p in net.parameters())


def test_lazy_r1_runs_every_nth_critic_step_and_resumes_on_schedule(tmp_path, unpaired_root):
    trainer = Trainer(config_for("dcgan", tmp_path / "a", unpaired_root, r1_gamma=10.0, r1_every=3, steps=6),
                      verbose=False)
    seen = ["r1" in trainer.train_step() for _ in range(4)]
    assert seen == [True, False, False, True]
    trainer.save()
    resumed = Trainer.resume(tmp_path / "a", verbose=False)
    assert ["r1" in resumed.train_step() for _ in range(2)] == [False, False]

    # The penalty trains the critic: the same run without it ends elsewhere.
    plain = Trainer(config_for("dcgan", tmp_path / "b", unpaired_root, steps=6), verbose=False)
    for _ in range(4):
        plain.train_step()
    assert not torch.equal(next(plain.nets["D"].parameters()), next(trainer.nets["D"].parameters()))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(cuda_graphs=True, device="cpu"), "--cuda-graphs replays CUDA graphs: it needs a CUDA device"),
        (dict(r1_gamma=-1.0), "r1_gamma must be a number >= 0"),
        (dict(r1_every=0), "r1_every must be a positive integer"),
        (dict(model="cyclegan", data=None, r1_gamma=1.0), "--r1-gamma applies to the noise-to-image families"),
        (dict(conditional="acgan", sync_bn=True), "--sync-bn with --conditional acgan: the generator's conditional"),
    ],
)
def test_step_options_refuse_what_cannot_run(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**changes).resolved()


def test_graphed_step_refuses_the_cpu_and_a_bad_warmup():
    from fastgan.train import graphed_step

    with pytest.raises(RuntimeError, match="graphed_step: CUDA graphs need a CUDA device"):
        graphed_step(lambda x: x * 2)(torch.ones(2))
    with pytest.raises(ValueError, match="graphed_step: warmup must be a positive int"):
        graphed_step(lambda x: x, warmup=0)


@pytest.mark.parametrize("options", [{}, dict(conditional="projection"), dict(conditional="acgan"),
                                     dict(channels_last=True)], ids=["plain", "projection", "acgan", "channels-last"])
def test_a_critic_without_batch_norm_sees_real_and_fake_in_one_forward(options, tmp_path, unpaired_root):
    """WGAN-GP's critic (no batch norm) runs once on real and fake together: the same training as two forwards (to
    float32 round-off: a convolution over another batch size may sum in another order) with one critic forward
    fewer per step; a discriminator with batch norm keeps its two forwards."""
    runs = []
    for joint in (False, True):
        trainer = Trainer(config_for("wgan-gp", tmp_path / str(joint), unpaired_root, **options), verbose=False)
        assert trainer.joint_critic
        trainer.joint_critic = joint
        batches = []
        trainer.nets["D"].register_forward_hook(lambda module, args, out, seen=batches: seen.append(args[0].shape[0]))
        for _ in range(2):
            trainer.train_step()
        # per critic step: (real, fake) or (real + fake), the penalty's interpolates; then the generator step's fakes
        critic_step = [8, 4] if joint else [4, 4, 4]
        assert batches == 2 * (critic_step + critic_step + [4]), batches
        runs.append(_state_tensors(trainer))
    for name, value in runs[0].items():
        torch.testing.assert_close(runs[1][name], value, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    assert not Trainer(config_for("dcgan", tmp_path / "dcgan", unpaired_root), verbose=False).joint_critic


def test_cyclegan_discriminators_see_real_and_pooled_fakes_in_one_forward(tmp_path, unpaired_root):
    """CycleGAN's PatchGANs (instance norm, per sample) run once on real and pooled fake images: the same
    discriminator loss and gradients as two forwards each. (Compared after one step, gradients not weights: the
    bias of a conv before an instance norm has a zero gradient, whose round-off Adam scales to a full step.)"""
    runs = []
    for joint in (False, True):
        trainer = Trainer(config_for("cyclegan", tmp_path / str(joint), unpaired_root), verbose=False)
        assert trainer.joint_critic
        trainer.joint_critic = joint
        losses = trainer.train_step()
        grads = {f"{role}.{name}": p.grad for role in ("D_A", "D_B")
                 for name, p in trainer.nets[role].named_parameters()}
        runs.append((losses["loss_d"], grads))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-5, atol=1e-7)
    for name, grad in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_the_launch_budget_counts_kernel_ops_and_fastgan_launches_fewer():
    """benchmarks/launch_budget.py's counter on tiny networks: views, allocations and host reads are not counted,
    fused Adam is one op per optimiser step where foreach Adam is several, and fastgan's step dispatches fewer ops."""
    from benchmarks.launch_budget import count

    plain, fast = count("DCGAN-64", "plain", tiny=True), count("DCGAN-64", "fastgan", tiny=True)
    assert fast["aten::_fused_adam_"] == 2 and "aten::_fused_adam_" not in plain
    assert plain["aten::_foreach_addcdiv_"] == 2
    uncounted = ("::empty", "::view", "::_local_scalar_dense", "::detach")
    assert not any(name.endswith(uncounted) for name in {**plain, **fast})
    assert sum(fast.values()) < sum(plain.values())
