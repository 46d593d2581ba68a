"""``fastgan train`` and ``fastgan sample``: defaults, clear errors before any work, a run, resume, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastgan.cli import COMMANDS, main
from fastgan.data import read_image
from fastgan.train import TrainConfig, load_checkpoint

TINY = ["--impl", "ref", "--image-size", "16", "--ngf", "4", "--ndf", "4", "--z-dim", "8", "--batch-size", "4",
        "--log-every", "1", "--quiet"]


def test_train_and_sample_are_registered():
    assert {"train", "sample"} <= set(COMMANDS)


def test_defaults_train_a_dcgan_on_the_bundled_digits_under_runs():
    config = TrainConfig().resolved()
    assert (config.model, config.data, config.image_size, config.channels) == ("dcgan", "digits", 32, 1)
    assert config.out == "runs/dcgan-digits"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "cyclegan"], "cyclegan translates between two image domains: it needs --data unpaired"),
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
    ],
)
def test_bad_combinations_fail_clearly_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing was written


def test_bad_flags_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "stylegan"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'stylegan'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--amp", "fp8"])


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
