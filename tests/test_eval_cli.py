"""``fastgan eval``: a table and a JSON beside the run, numbers equal to the library's; bad input in one line."""

from __future__ import annotations

import json

import pytest
import torch

from fastgan.cli import COMMANDS, main
from fastgan.metrics import frechet_distance, precision_recall
from fastgan.metrics.lenet import LeNetFeatures
from fastgan.train.sampling import generate, load_generator

from .test_cli import TINY, one_line
from .test_data import write_mnist

TINY_28 = [flag if flag != "16" else "28" for flag in TINY]  # the same tiny DCGAN, at MNIST's 28x28


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A 2-step DCGAN run on tiny random MNIST files (train and t10k splits)."""
    root = tmp_path_factory.mktemp("eval")
    write_mnist(root / "mnist", "train", 160, gz=True, seed=0)
    write_mnist(root / "mnist", "t10k", 96, gz=True, seed=1)
    run = root / "run"
    assert main(["train", *TINY_28, "--data", "mnist", "--data-root", str(root / "mnist"), "--steps", "2",
                 "--out", str(run)]) == 0
    return run, root / "mnist"


def test_eval_is_a_subcommand():
    assert "eval" in COMMANDS


def test_eval_writes_a_table_and_json_beside_the_run_with_the_librarys_numbers(mnist_run, capsys, monkeypatch,
                                                                               tmp_path):
    run, data_root = mnist_run
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "--checkpoint", str(run), "--num", "80", "--metrics", "fid,pr,is,kid", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((run / "eval-lenet.json").read_text())
    assert record["features"] == "lenet" and record["lenet_trained_now"] is True
    assert record["num_generated"] == 80 and record["num_real"] == 80
    assert set(record["scores"]) == {"fid", "precision", "recall", "is_mean", "is_std", "kid_mean", "kid_std"}
    assert "reference: test split; LeNet trained on train split" == record["real"]
    for label in ("FID", "precision", "recall", "IS (mean)", "KID (mean)", "lenet_accuracy", "eval-lenet.json"):
        assert label in printed
    # The same numbers from the library: the cached LeNet, the run's EMA generator with the seed, the test split.
    net = LeNetFeatures()
    net.load_state_dict(torch.load(record["lenet_cache"], weights_only=True)["net"])
    generator, config, device = load_generator(run, "cpu")
    fake = net.features(generate(generator, config, device, 80, seed=3))[0]
    from fastgan.data import MNISTDataset

    real = net.features(MNISTDataset(data_root, split="test").images[:80].float().div(127.5).sub(1))[0]
    assert record["scores"]["fid"] == pytest.approx(frechet_distance(real, fake), rel=1e-9)
    assert (record["scores"]["precision"], record["scores"]["recall"]) == precision_recall(real, fake)
    # A second evaluation reuses the cached network.
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--num", "80", "--metrics", "fid", "--seed", "3",
                 "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["lenet_trained_now"] is False and again["scores"]["fid"] == record["scores"]["fid"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--metrics", "fid,xyz"], "--metrics: unknown metric(s) xyz: choose from fid, kid, is, pr"),
        (["--num", "1"], "--num must be at least 2"),
        (["--features", "inception", "--inception-weights", "/nonexistent/w.pth"],
         "the Inception weights file /nonexistent/w.pth does not exist"),
        (["--data-root", "/nonexistent/mnist"], "MNIST: the train split was not found"),
    ],
)
def test_bad_eval_input_gets_one_line(argv, message, mnist_run, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "--checkpoint", str(mnist_run[0]), *argv]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("fastgan eval: error: ") and message in line


def test_eval_refuses_lenet_for_other_sizes_and_missing_checkpoints(tmp_path, capsys):
    run = tmp_path / "run16"
    assert main(["train", *TINY, "--steps", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--features", "lenet"]) == 2
    assert "--features lenet needs 28x28 grey images" in one_line(capsys.readouterr().err)
    assert main(["eval", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "no checkpoint at" in one_line(capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", str(run), "--features", "vgg"])
    assert "invalid choice" in one_line(capsys.readouterr().err)


def test_eval_with_only_a_test_split_trains_lenet_on_half_and_scores_against_the_other(mnist_run, capsys,
                                                                                        monkeypatch, tmp_path):
    run, _ = mnist_run
    images, _ = write_mnist(tmp_path / "only-test", "t10k", 160, gz=False, seed=2)
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(run), "--data-root", str(tmp_path / "only-test"), "--num", "100",
                 "--metrics", "fid", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["real"].startswith("only the test split is present: LeNet trained on a seeded half of it")
    assert record["num_real"] == 80 and record["num_generated"] == 100  # the other half of 160
    assert "only the test split" in capsys.readouterr().out


def test_train_eval_every_logs_the_scores_fastgan_eval_gives_and_changes_no_training(mnist_run, capsys, monkeypatch,
                                                                                    tmp_path):
    import csv

    from fastgan.train import load_checkpoint

    _, data_root = mnist_run
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path / "cache"))
    common = [*TINY_28, "--data", "mnist", "--data-root", str(data_root), "--steps", "4", "--seed", "0"]
    assert main(["train", *common, "--eval-every", "2", "--eval-num", "40", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "b")]) == 0
    with open(tmp_path / "a" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scored = {int(r["step"]): r for r in rows if r["lenet_fid"]}
    assert sorted(scored) == [2, 4] and len(rows) == 6  # 4 loss rows (--log-every 1) and 2 score rows
    assert all(0 <= float(scored[s][k]) <= 1 for s in scored for k in ("precision", "recall"))
    # The scores are fastgan eval's for the same generator, seed and number of images.
    assert main(["eval", "--checkpoint", str(tmp_path / "a"), "--num", "40", "--metrics", "fid,pr"]) == 0
    record = json.loads((tmp_path / "a" / "eval-lenet.json").read_text())
    assert float(scored[4]["lenet_fid"]) == pytest.approx(record["scores"]["fid"], rel=1e-9)
    assert float(scored[4]["recall"]) == pytest.approx(record["scores"]["recall"], abs=1e-12)
    # Scoring touches no training state: the same weights as the run without it.
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(a["nets"]["G"][k], v) for k, v in b["nets"]["G"].items())
    assert all(torch.equal(a["ema"][k], v) for k, v in b["ema"].items())
    capsys.readouterr()
    assert main(["train", *TINY, "--eval-every", "2", "--out", str(tmp_path / "c")]) == 2
    assert "--eval-every scores with LeNet features: 28x28 grey" in one_line(capsys.readouterr().err)
