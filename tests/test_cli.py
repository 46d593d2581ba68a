"""``fastgan train`` and ``fastgan sample``: defaults, clear errors before any work, a run, resume, outputs."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal

import numpy as np
import pytest
import torch

from fastgan.cli import COMMANDS, main
from fastgan.data import read_image, save_images
from fastgan.train import TrainConfig, Trainer, load_checkpoint
from fastgan.train import trainer as trainer_module
from fastgan.train.cli import _settings
from fastgan.train.config import read_config_file

from .test_data import write_mnist

TINY = ["--impl", "ref", "--image-size", "16", "--ngf", "4", "--ndf", "4", "--z-dim", "8", "--batch-size", "4",
        "--log-every", "1", "--workers", "0", "--quiet"]
TINY_CYCLEGAN = ["--model", "cyclegan", "--image-size", "32", "--ngf", "4", "--ndf", "4", "--n-blocks", "1",
                 "--impl", "ref", "--workers", "0", "--num-samples", "2", "--quiet"]


def one_line(err: str) -> str:
    """The error output, checked to be one line (every bad input gets one, never a traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_every_subcommand_is_listed():
    assert {"info", "train", "sample"} <= set(COMMANDS)


def test_defaults_train_a_dcgan_on_the_bundled_digits_under_runs():
    config = TrainConfig().resolved()
    assert (config.model, config.data, config.image_size, config.channels) == ("dcgan", "digits", 32, 1)
    assert config.out == "runs/dcgan-digits" and config.batch_size == 64


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "cyclegan", "--data", "mnist"], "cyclegan translates between two image domains: it needs"),
        (["--model", "dcgan", "--image-size", "48"], "DCGAN: cannot make 48x48 images"),
        (["--model", "wgan-gp", "--image-size", "256"], "DCGAN: cannot make 256x256"),
        (["--model", "cyclegan", "--data", "unpaired", "--data-root", "x", "--image-size", "30"], "CycleGAN: cannot"),
        (["--data", "folder"], "--data folder needs --data-root"),
        (["--model", "gan", "--data", "unpaired", "--data-root", "x"], "model 'gan' needs one"),
        (["--batch-size", "0"], "batch_size must be a positive integer"),
        (["--steps", "-3"], "steps must be a positive integer"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
        (["--data", "mnist", "--data-root", "/nonexistent/mnist"], "MNIST: the train split was not found"),
        (["--checkpoint", "x.pt"], "--checkpoint is only meaningful with --resume"),
        (["--data", "folder", "--data-root", "x", "--split", "test"], "--data folder has no splits"),
        (["--workers", "-1"], "workers must be an integer >= 0"),
        (["--betas", "0.5", "1.5"], "betas must be two numbers in [0, 1)"),
        (["--resume", "--overwrite"], "--overwrite starts a new run; it cannot be combined with --resume"),
    ],
)
def test_bad_combinations_fail_clearly_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *argv, "--out", str(out)]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not out.exists()  # nothing was written


def test_bad_flags_are_rejected_by_the_parser_in_one_line(capsys):
    for argv, message in ((["train", "--model", "stylegan"], "invalid choice: 'stylegan'"),
                          (["train", "--amp", "fp8"], "invalid choice: 'fp8'"),
                          (["train", "--steps", "ten"], "--steps: invalid int value: 'ten'"),
                          (["train", "--extra", "novalue"], "expected KEY=VALUE"),
                          (["sample", "--out", "x.png"], "the following arguments are required: --checkpoint")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in one_line(capsys.readouterr().err)  # no usage block of ~20 lines first


@pytest.mark.parametrize("command", ["train", "sample"])
def test_every_flag_has_help_that_shows_its_default(command):
    parser = argparse.ArgumentParser()
    COMMANDS[command][1](parser)
    helpless = [a.option_strings for a in parser._actions if a.dest != "help" and "default" not in (a.help or "")]
    assert helpless == []


def test_every_train_config_field_is_a_flag():
    parser = argparse.ArgumentParser()
    COMMANDS["train"][1](parser)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields <= {a.dest for a in parser._actions}
    args = parser.parse_args(["--betas", "0.1", "0.2", "--clip", "0.02", "--gp-weight", "3", "--lambda-cycle", "4",
                              "--lambda-identity", "0.1", "--pool-size", "7", "--decay-start", "0.3", "--num-samples",
                              "9", "--extra", "note=hi", "--extra", "n=3", "--no-download", "--split", "test"])
    config = TrainConfig(**_settings(args))
    assert (config.betas, config.clip, config.gp_weight, config.lambda_cycle, config.lambda_identity) == (
        (0.1, 0.2), 0.02, 3.0, 4.0, 0.1)
    assert (config.pool_size, config.decay_start, config.num_samples) == (7, 0.3, 9)
    assert config.extra == {"note": "hi", "n": 3}
    assert (config.download, config.split) == (False, "test")


def test_config_file_with_flags_overriding_it(tmp_path, capsys):
    settings = tmp_path / "run.toml"
    settings.write_text('steps = 5\nlr-g = 1e-3\nngf = 8\n\n[extra]\nnote = "from the file"\n')
    run = tmp_path / "run"
    assert main(["train", "--config", str(settings), *TINY, "--steps", "1", "--out", str(run)]) == 0
    saved = load_checkpoint(run)["config"]
    assert (saved["steps"], saved["lr_g"], saved["ngf"], saved["extra"]) == (1, 1e-3, 4, {"note": "from the file"})
    kept = read_config_file(run / "config.toml")  # the run folder keeps the resolved settings
    assert TrainConfig(**kept).to_dict() == saved


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no such file"),
        ("steps = ", "not valid TOML"),
        ("stpes = 3", "unknown setting 'stpes'"),
        ('steps = "ten"', "steps must be int, got 'ten'"),
        ("betas = 0.5", "betas must be a list of numbers"),
    ],
)
def test_bad_config_files_get_one_line(text, message, tmp_path, capsys):
    settings = tmp_path / "run.toml"
    if text is not None:
        settings.write_text(text + "\n")
    assert main(["train", "--config", str(settings), "--out", str(tmp_path / "run")]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"fastgan train: error: --config {settings}") and message in line
    assert not (tmp_path / "run").exists()


def test_an_existing_run_folder_needs_resume_or_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "1", "--out", str(run)]) == 0
    checkpoint = (run / "last.pt").read_bytes()
    assert main(["train", *TINY, "--steps", "1", "--seed", "9", "--out", str(run)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert (run / "last.pt").read_bytes() == checkpoint
    assert main(["train", *TINY, "--steps", "2", "--seed", "9", "--out", str(run), "--overwrite"]) == 0
    assert [row.split(",")[0] for row in (run / "metrics.csv").read_text().splitlines()] == ["step", "1", "2"]
    assert load_checkpoint(run)["config"]["seed"] == 9


def test_impl_triton_on_cpu_without_the_interpreter_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["train", "--impl", "triton", "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--impl triton cannot run on cpu" in line and "TRITON_INTERPRET=1" in line
    assert not (tmp_path / "run").exists()


def test_dataset_errors_name_flags_and_split_selects_the_test_split(tmp_path, capsys):
    write_mnist(tmp_path / "mnist", "t10k", 8, gz=True)
    argv = ["train", *TINY, "--data", "mnist", "--data-root", str(tmp_path / "mnist"), "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "use --split test" in line and "Pass --download" in line and "download=True" not in line
    assert main([*argv, "--split", "test", "--out", str(tmp_path / "b")]) == 0
    assert load_checkpoint(tmp_path / "b")["config"]["split"] == "test"


def test_a_garbage_checkpoint_is_said_to_be_no_fastgan_checkpoint(tmp_path, capsys):
    garbage = tmp_path / "last.pt"
    garbage.write_bytes(b"\x80\x02garbage")
    assert main(["sample", "--checkpoint", str(garbage), "--out", str(tmp_path / "x.png")]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{garbage} is not a fastgan checkpoint" in line and "weights_only" not in line
    assert main(["train", "--resume", "--checkpoint", str(garbage)]) == 2
    assert "is not a fastgan checkpoint" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_says_how_to_resume_and_exits_non_zero(sig, tmp_path, capsys, monkeypatch):
    step = Trainer.train_step

    def step_then_signal(self):
        losses = step(self)
        if self.step == 2:
            os.kill(os.getpid(), sig)  # a real signal, through the handler fastgan train installs
        return losses

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    run = tmp_path / "run"
    before = signal.getsignal(sig)
    assert main(["train", *TINY, "--steps", "50", "--out", str(run)]) == 128 + sig
    line = one_line(capsys.readouterr().err)
    assert f"stopped by {signal.Signals(sig).name} at step 2 of 50" in line
    assert f"continue with: fastgan train --resume --out {run}" in line
    assert load_checkpoint(run)["step"] == 2
    assert signal.getsignal(sig) is before  # the handler is gone again
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(run), "--steps", "3", "--quiet"]) == 0
    assert load_checkpoint(run)["step"] == 3


def test_an_interrupt_before_training_starts_saves_nothing_and_says_so(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "__init__", interrupted)
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 130
    assert "interrupted by SIGINT; nothing was saved" in one_line(capsys.readouterr().err)


def test_cyclegan_runs_on_the_embedded_data_and_samples_from_anywhere(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", *TINY_CYCLEGAN, "--steps", "1", "--out", str(run)]) == 0
    assert load_checkpoint(run)["config"]["data"] == "digit-styles"
    assert main(["sample", "--checkpoint", str(run), "--num", "2", "--out", str(tmp_path / "ab.png")]) == 0
    # --data-root is stored resolved: sampling (which reads the A images) works from another folder.
    work = tmp_path / "work"
    save_images(torch.rand(2, 3, 32, 32) * 2 - 1, work / "pairs" / "trainA")
    save_images(torch.rand(2, 3, 32, 32) * 2 - 1, work / "pairs" / "trainB")
    monkeypatch.chdir(work)
    assert main(["train", *TINY_CYCLEGAN, "--data", "unpaired", "--data-root", "pairs", "--steps", "1",
                 "--out", "run"]) == 0
    assert load_checkpoint(work / "run")["config"]["data_root"] == str(work / "pairs")
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--checkpoint", "work/run", "--num", "2", "--out", "x.png"]) == 0


def test_train_resume_and_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(run), "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "samples:" in printed and str(run / "last.pt") in printed
    assert load_checkpoint(run)["step"] == 2
    assert (run / "samples" / "step_0000002.png").is_file()

    # Resume to step 3: flags that change what is trained are refused, --steps may grow.
    assert main(["train", "--resume", "--out", str(run), "--model", "wgan"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(run), "--steps", "3", "--quiet"]) == 0
    assert load_checkpoint(run)["step"] == 3
    assert main(["train", "--resume", "--out", str(tmp_path / "missing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err

    grid = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run), "--num", "5", "--out", str(grid)]) == 0
    assert read_image(grid, channels=1).shape == (1, 2 + 2 * 18, 2 + 3 * 18)  # 3 columns, 2 rows of 16x16 + padding
    folder = tmp_path / "pngs"
    assert main(["sample", "--checkpoint", str(run / "last.pt"), "--num", "3", "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    array_path = tmp_path / "samples.npy"
    assert main(["sample", "--checkpoint", str(run), "--num", "7", "--out", str(array_path), "--batch-size", "3"]) == 0
    array = np.load(array_path)
    assert array.shape == (7, 16, 16, 1) and array.dtype == np.uint8
    assert array.std() > 0  # not a constant image
    # The same seed gives the same images; the folder's PNGs are the first images of the array.
    assert np.array_equal(read_image(folder / "000001.png", 1).permute(1, 2, 0).numpy(), array[1])

    assert main(["sample", "--checkpoint", str(run), "--out", str(tmp_path / "x.jpg")]) == 2
    assert "expected a .png file, a .npy file or a folder" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(grid)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
