"""Data-parallel training on 2 gloo processes (CPU): the same math as one process, identical parameters on every
process after every step, rank-0-only writes, exact resume, a dead process taking the other down.

The processes run this file as a script (``torchrun ... tests/test_distributed.py --worker OUT``): one launch does
every multi-process check, since each start costs seconds of imports. The pytest process then compares against
one-process runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastgan.nn import BatchNormAct2d, InstanceNormAct2d
from fastgan.train import TrainConfig, Trainer, load_checkpoint
from fastgan.train.distributed import Parallel, SyncBatchNormAct2d

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "dcgan": dict(model="dcgan", image_size=16, ngf=8, ndf=8, z_dim=16, sync_bn=True),
    "wgan-gp": dict(model="wgan-gp", image_size=16, ngf=8, ndf=8, z_dim=16, n_critic=2, sync_bn=True),
    # Lazy R1 through the critic's synchronised batch norms: the penalty's double backward crosses the all-reduces.
    "dcgan-r1": dict(model="dcgan", image_size=16, ngf=8, ndf=8, z_dim=16, sync_bn=True, r1_gamma=1.0, r1_every=2),
    # The pools hold global batches: CycleGAN (instance norm) is one process's math too; read through a DataLoader.
    "cyclegan": dict(model="cyclegan", data="digit-styles", image_size=32, ngf=4, ndf=4, n_blocks=1, pool_size=3),
}
# Families that only need to train, identical on both processes.
OTHERS = {
    "gan": dict(model="gan", image_size=16, z_dim=16, amp="bf16"),
    "wgan": dict(model="wgan", image_size=16, ngf=8, ndf=8, z_dim=16, n_critic=2, channels_last=True),
    # Class-conditional: the fake labels are drawn for the global batch and sliced, as the noise is.
    "wgan-gp-acgan": dict(model="wgan-gp", image_size=16, ngf=8, ndf=8, z_dim=16, n_critic=2, conditional="acgan"),
}
STEPS = 3
# float32 parameters after STEPS Adam steps, 2 processes against 1: only the summation order differs (gradient
# averages, the global batch-norm statistics summed over two halves); measured differences ~1e-6.
RTOL, ATOL = 1e-4, 1e-5


def config_for(family: str, out: Path, **changes) -> TrainConfig:
    settings = dict(data="digits", batch_size=8, steps=STEPS, impl="ref", num_samples=4, log_every=1, sample_every=2,
                    checkpoint_every=2, seed=5, ema_decay=0.9, workers=0, device="cpu")
    settings.update({**TINY, **OTHERS}[family])
    settings.update(changes)
    return TrainConfig(out=str(out), **settings)


def _parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {f"{role}.{k}": v.detach().clone() for role, net in trainer.nets.items()
            for k, v in net.state_dict().items()}


def _before_instance_norm(trainer: Trainer) -> set[str]:
    """The biases of convolutions feeding an instance norm (CycleGAN's): the norm removes them, so their gradient is
    rounding noise, which Adam scales to full-size steps of any sign; they are not compared."""
    return {f"{role}.{name}.bias" for role, net in trainer.nets.items() for name, m in net.named_modules()
            if isinstance(getattr(m, "norm", None), InstanceNormAct2d) and getattr(m, "bias", None) is not None}


def _flat(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for net in trainer.nets.values() for p in net.parameters()])


# -- the worker: runs in each of the 2 processes ---------------------------------------------------------------------


def _penalty_through(norm: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A gradient penalty through ``norm``: the output and the input gradient (kept differentiable); backward done."""
    x = x.clone().requires_grad_(True)
    y = norm(x)
    (grad,) = torch.autograd.grad((y * y.detach().sign()).sum(), x, create_graph=True)
    (grad.square().sum() + y.square().sum()).backward()
    return y.detach(), grad.detach()


def check_sync_batch_norm(parallel: Parallel) -> None:
    """SyncBatchNormAct2d on each process's half == BatchNormAct2d on the whole batch, through a double backward."""
    import torch.distributed as dist

    torch.manual_seed(0)
    norm = BatchNormAct2d(3, act="lrelu", alpha=0.2, impl="ref")
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    sync = SyncBatchNormAct2d(BatchNormAct2d(3, act="lrelu", alpha=0.2, impl="ref"))
    sync.load_state_dict(norm.state_dict())
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    y, grad = _penalty_through(norm, x)
    y_half, grad_half = _penalty_through(sync, parallel.local(x))
    torch.testing.assert_close(parallel.gather(y_half), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parallel.gather(grad_half), grad, rtol=1e-4, atol=1e-5)
    for name in ("weight", "bias"):
        summed = getattr(sync, name).grad.clone()
        dist.all_reduce(summed)  # each process holds its part of the global loss's gradient
        torch.testing.assert_close(summed, getattr(norm, name).grad, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(sync, name), getattr(norm, name))


def worker(out: Path) -> None:
    import torch.distributed as dist

    report: dict = {}
    check_sync_batch_norm(Parallel.setup(torch.device("cpu")))
    report["sync_bn_checked"] = True
    try:
        Trainer(config_for("dcgan", out / "odd", batch_size=9), verbose=False)
    except ValueError as err:
        report["odd_batch_error"] = str(err)
    for family in (*TINY, *OTHERS):
        trainer = Trainer(config_for(family, out / family), verbose=False)
        assert trainer.parallel.world_size == 2
        synced = any(isinstance(m, SyncBatchNormAct2d) for net in trainer.nets.values() for m in net.modules())
        assert synced == trainer.config.sync_bn, family
        for step in range(1, STEPS + 1):
            trainer.fit(step)
            flat = _flat(trainer)
            gathered = [torch.empty_like(flat) for _ in range(2)]
            dist.all_gather(gathered, flat)
            assert torch.equal(gathered[0], gathered[1]), f"{family}: parameters differ across processes"
    # Resume with the same number of processes: bit-identical to the uninterrupted run.
    straight = Trainer(config_for("wgan-gp", out / "straight", steps=4), verbose=False)
    straight.fit()
    first = Trainer(config_for("wgan-gp", out / "split", steps=4, keep_every=2), verbose=False)
    first.fit(2)
    resumed = Trainer.resume(out / "split", verbose=False)
    resumed.fit()
    report["resume_exact"] = torch.equal(_flat(straight), _flat(resumed))
    if dist.get_rank() == 0:
        (out / "report.json").write_text(json.dumps(report))
    resumed.parallel.close()


def _torchrun(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False, **kwargs)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    proc = _torchrun([str(Path(__file__)), "--worker", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


# -- the checks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(TINY))
def test_two_processes_train_the_same_parameters_as_one(two_process_run, family, tmp_path):
    """Every process takes its slice of the same global batch of data, noise, penalty weights and pool choices: with
    --sync-bn (dcgan, wgan-gp, dcgan with lazy R1) the two-process run is the one-process run up to float summation
    order."""
    single = Trainer(config_for(family, tmp_path), verbose=False)
    for _ in range(STEPS):
        single.train_step()
    expected = _parameters(single)
    state = load_checkpoint(two_process_run / family)
    assert state["step"] == STEPS and state["world_size"] == 2
    got = {f"{role}.{k}": v for role, net in state["nets"].items() for k, v in net.items()}
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if name in _before_instance_norm(single):
            continue
        if value.is_floating_point():
            torch.testing.assert_close(got[name], value, rtol=RTOL, atol=ATOL, msg=f"{family} {name}")
        else:
            assert torch.equal(got[name], value), name
    # The initial weights moved: the comparison is of trained parameters, not of two initialisations.
    initial = _parameters(Trainer(config_for(family, tmp_path / "init"), verbose=False))
    assert any(not torch.allclose(initial[k], v) for k, v in expected.items() if v.is_floating_point())


def test_only_rank_zero_writes_and_checkpoints_load_anywhere(two_process_run, tmp_path):
    out = two_process_run / "dcgan"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # one row per step, not one per process
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"step_000000{s}.png" for s in (1, 2, 3)]
    assert not list(out.glob(".*.tmp"))
    from fastgan.cli import main

    assert main(["sample", "--checkpoint", str(out), "--out", str(tmp_path / "grid.png"), "--num", "4",
                 "--device", "cpu"]) == 0
    assert (tmp_path / "grid.png").is_file()


def test_odd_global_batch_is_refused_and_sync_batch_norm_differentiates_twice(two_process_run):
    report = json.loads((two_process_run / "report.json").read_text())
    assert report["sync_bn_checked"]  # the worker asserts; a failure there fails the launch
    assert "--batch-size 9" in report["odd_batch_error"] and "multiple of 2" in report["odd_batch_error"]


def test_resume_with_the_same_processes_is_exact_and_with_others_warns(two_process_run, tmp_path):
    assert json.loads((two_process_run / "report.json").read_text())["resume_exact"]
    with pytest.warns(UserWarning, match="data order each process sees changes"):
        resumed = Trainer.resume(two_process_run / "split" / "step_0000002.pt", verbose=False, out=str(tmp_path))
    assert resumed.step == 2
    resumed.fit()  # one process continues the two-process run: the same global batches, the same math
    assert load_checkpoint(tmp_path)["world_size"] == 1
    straight = load_checkpoint(two_process_run / "straight")["nets"]
    for role, net in resumed.nets.items():
        for name, value in net.state_dict().items():
            torch.testing.assert_close(value, straight[role][name], rtol=RTOL, atol=ATOL, msg=f"{role}.{name}")


def _launch_pair(out: Path, peer_timeout: float) -> list[subprocess.Popen]:
    """``fastgan train`` as ranks 0 and 1 of a launch without torchrun's agent (rank 0 holds the store); returns once
    the first checkpoint is written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR":
           "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000), "FASTGAN_PEER_TIMEOUT_S": str(peer_timeout)}
    cmd = [sys.executable, "-m", "fastgan", "train", "--model", "dcgan", "--image-size", "16", "--ngf", "8", "--ndf",
           "8", "--z-dim", "16", "--batch-size", "8", "--steps", "100000", "--checkpoint-every", "1", "--impl", "ref",
           "--device", "cpu", "--workers", "0", "--out", str(out), "--quiet"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    deadline = time.monotonic() + 120
    while not (out / "last.pt").is_file():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail("the two processes did not start training: " + procs[0].communicate()[1][-2000:])
        time.sleep(0.2)
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float) -> tuple[list[str], float]:
    """Both processes' stderr, and the seconds until the last one exited (killed after ``timeout``)."""
    start = time.monotonic()
    try:
        stderr = [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return stderr, time.monotonic() - start


def test_a_dead_process_ends_the_other_naming_it(tmp_path):
    """Kill rank 1 of 2 mid-run: rank 0 exits within the peer timeout, naming rank 1; its last checkpoint loads."""
    timeout = 4.0
    procs = _launch_pair(tmp_path, timeout)
    procs[1].send_signal(signal.SIGKILL)
    (stderr, _), took = _wait(procs, timeout + 30)
    assert procs[0].returncode == 1
    assert "rank 1 stopped responding" in stderr, stderr[-2000:]
    assert took < timeout + 10, f"rank 0 took {took:.1f} s to exit"
    state = load_checkpoint(tmp_path)
    assert state["step"] >= 1 and state["world_size"] == 2


def test_a_stop_request_in_one_process_stops_both_after_the_same_step(tmp_path):
    """SIGTERM to rank 1 alone: the request is all-reduced each step, so both stop after the same step, rank 0
    saving it; neither waits for the watchdog."""
    procs = _launch_pair(tmp_path, 30.0)
    procs[1].send_signal(signal.SIGTERM)
    (stderr, _), took = _wait(procs, 60)
    assert [p.returncode for p in procs] == [128 + signal.SIGINT, 128 + signal.SIGTERM], stderr[-2000:]
    assert took < 20, f"the processes took {took:.1f} s to stop"
    step = load_checkpoint(tmp_path)["step"]
    assert f"stopped by request at step {step} " in stderr


# -- one process: the synchronised norm is BatchNormAct2d ------------------------------------------------------------


def test_gradients_travel_in_a_few_buckets_not_one_call_per_parameter():
    from fastgan.train.distributed import BUCKET_BYTES, _buckets

    small = [torch.zeros(10) for _ in range(50)] + [torch.zeros(3, dtype=torch.float16)]
    assert [len(b) for b in _buckets(small)] == [50, 1]  # one per dtype
    big = [torch.zeros(BUCKET_BYTES // 4 // 2 + 1) for _ in range(4)]  # each a bit over half a bucket
    assert [len(b) for b in _buckets(big)] == [2, 2]


def test_the_progress_line_shows_the_number_of_processes():
    import io

    from fastgan.train import Progress

    stream = io.StringIO()
    Progress(10, stream=stream, world_size=2).update(5, {"steps_per_s": 1.0, "loss_d": 0.5})
    assert stream.getvalue().startswith("step 5/10 | 2 processes | ")
    stream = io.StringIO()
    Progress(10, stream=stream).update(5, {"steps_per_s": 1.0})
    assert "processes" not in stream.getvalue()


def test_single_process_parallel_is_a_no_op():
    parallel = Parallel.setup(torch.device("cpu"))
    assert (parallel.rank, parallel.world_size, parallel.is_main) == (0, 1, True)
    grad = torch.randn(3)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = grad.clone()
    parallel.all_reduce_gradients([p])
    assert torch.equal(p.grad, grad) and parallel.local(grad) is grad and parallel.any(True)


def test_sync_batch_norm_keeps_the_state_dict_and_matches_in_eval():
    norm = BatchNormAct2d(4, act="lrelu", alpha=0.2)
    with torch.no_grad():
        norm.running_mean.uniform_()
        norm.weight.uniform_()
    sync = SyncBatchNormAct2d(norm)
    assert sync.state_dict().keys() == norm.state_dict().keys() and sync.weight is norm.weight
    assert repr(sync) == repr(norm).replace("BatchNormAct2d", "SyncBatchNormAct2d")  # the activation shown too
    x = torch.randn(2, 4, 3, 3)
    norm.eval(), sync.eval()
    torch.testing.assert_close(sync(x), norm(x))
    with pytest.raises(ValueError, match="SyncBatchNormAct2d: expected a 4-D input"):
        sync(x[0])


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(Path(sys.argv[2]))
