"""Training curves: nnU-Net's logging read from a real short CPU training, checked against the text log nnU-Net
wrote during the same training; fallback to checkpoint_latest.pth; clear errors; the figure."""
from __future__ import annotations

import re
import shutil

import matplotlib.image
import pytest
from conftest import short_schedule_env

from nnunet_poolskip.diagnostics import training_curves
from nnunet_poolskip.diagnostics.training_curves import TrainingLogError, plot_training_curves, read_training_log

EPOCHS = 2
FOLD = 1  # a fold no other test trains, so this run has exactly EPOCHS epochs


@pytest.fixture(scope="module")
def fold_folder(toy_workspace):
    return toy_workspace.train("nnUNetTrainerBaseline", FOLD, extra_env=short_schedule_env(epochs=EPOCHS)) / \
        f"fold_{FOLD}"


def text_log(folder):
    """What nnU-Net printed into its training_log_*.txt: epoch numbers and the 4-decimal train/val losses."""
    text = "\n".join(p.read_text() for p in sorted(folder.glob("training_log_*.txt")))
    def values(pattern, kind):  # nnU-Net's lines look like "2025-01-01 12:00:00.000000: train_loss 0.8665 "
        return [kind(v) for v in re.findall(rf"^\S+ \S+: {pattern}\s*$", text, flags=re.M)]

    return (values(r"Epoch (\d+)", int), values(r"train_loss (\S+)", float), values(r"val_loss (\S+)", float),
            values(r"Epoch time: (\S+) s", float))


def test_read_log_matches_what_the_training_wrote(fold_folder):
    log = read_training_log(fold_folder)
    epochs, train_losses, val_losses, times = text_log(fold_folder)
    assert log["checkpoint"] == str(fold_folder / "checkpoint_final.pth") and log["trainer"] == "nnUNetTrainerBaseline"
    assert log["epochs"] == epochs == list(range(EPOCHS))
    assert [round(v, 4) for v in log["train_losses"]] == pytest.approx(train_losses, abs=1e-9)
    assert [round(v, 4) for v in log["val_losses"]] == pytest.approx(val_losses, abs=1e-9)
    assert [round(v, 2) for v in log["epoch_times_s"]] == pytest.approx(times, abs=1e-9)
    # nnU-Net's moving average: first epoch the pseudo Dice itself, then 0.9 * previous + 0.1 * new
    dice, ema = log["mean_fg_dice"], log["ema_fg_dice"]
    assert ema[0] == pytest.approx(dice[0]) and ema[1] == pytest.approx(0.9 * ema[0] + 0.1 * dice[1])
    assert len(log["dice_per_class"]) == EPOCHS and all(0 <= v <= 1 for v in dice)


def test_falls_back_to_latest_checkpoint_and_names_bad_files(fold_folder, tmp_path):
    source = fold_folder
    running = tmp_path / "fold_0"
    running.mkdir()
    shutil.copyfile(source / "checkpoint_final.pth", running / "checkpoint_latest.pth")
    log = read_training_log(running)
    assert log["checkpoint"] == str(running / "checkpoint_latest.pth") and log["epochs"] == list(range(EPOCHS))

    with pytest.raises(TrainingLogError, match=f"{tmp_path / 'empty'} has no checkpoint_final.pth"):
        (tmp_path / "empty").mkdir()
        read_training_log(tmp_path / "empty")
    data = (source / "checkpoint_final.pth").read_bytes()
    (running / "checkpoint_final.pth").write_bytes(data[: len(data) // 2])  # truncated: final wins, and fails
    with pytest.raises(TrainingLogError, match=re.escape(f"cannot read the nnU-Net checkpoint {running}")):
        read_training_log(running)


def test_training_curves_figure(fold_folder, tmp_path, monkeypatch):
    figures = []
    saved = training_curves.save_figure
    monkeypatch.setattr(training_curves, "save_figure", lambda fig, path: (figures.append(fig), saved(fig, path)))
    path = tmp_path / "training_curves.png"
    caveat = "SMOKE-SCALE run on synthetic phantoms"
    # the same trained fold stands in for the runs of two models (the figure only reads their logs)
    plot_training_curves({"nnU-Net": [fold_folder], "nnU-Net + Pool Skip": [fold_folder] * 2}, path, caveat=caveat)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(path).shape[:2]
    assert 1200 <= width <= 1700 and height >= 400
    (figure,) = figures
    assert caveat in figure.get_suptitle().replace("\n", " ")
    loss_axes = figure.axes[0]
    # one line per run (fold folder), colour per model: 1 baseline run, 2 Pool Skip runs
    colours = [line.get_color() for line in loss_axes.get_lines()]
    assert colours == ["C0", "C1", "C1"]
    assert [list(line.get_xdata()) for line in loss_axes.get_lines()] == [list(range(EPOCHS))] * 3
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["nnU-Net (1 run)", "nnU-Net + Pool Skip (2 runs)"]
    with pytest.raises(TrainingLogError, match="has no checkpoint"):
        plot_training_curves({"x": [tmp_path]}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
