"""Training curves from nnU-Net's own logging: train and validation loss and the EMA pseudo Dice per epoch.

nnU-Net's trainer logs one value per epoch into its ``LocalLogger`` (nnunetv2/training/logging/nnunet_logger.py)
and stores that logger's dictionary under ``"logging"`` in every checkpoint: ``train_losses``, ``val_losses``,
``mean_fg_dice`` (the pseudo Dice on the validation batches), ``ema_fg_dice`` (its moving average, 0.9 / 0.1),
``dice_per_class_or_region``, ``lrs``, ``epoch_start_timestamps`` and ``epoch_end_timestamps``. Epochs count from 0
as in nnU-Net's log. ``checkpoint_final.pth`` holds the whole training; while a run is still going (or was
killed) ``checkpoint_latest.pth`` holds it up to its last save.

The paper claims that Pool Skip trains more robustly; :func:`plot_training_curves` puts the runs of a baseline and
its Pool Skip model side by side, one thin line per run (fold x seed), so that a reader sees it or not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from nnunet_poolskip.utilities.figures import READER_WIDTH_INCHES, new_figure, save_figure, set_title

CHECKPOINT_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth")
PER_EPOCH_KEYS = ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs")
PANELS = (("train_losses", "train loss"), ("val_losses", "validation loss"),
          ("ema_fg_dice", "EMA pseudo Dice (validation)"))
MARKERS_UP_TO_EPOCHS = 20  # fewer epochs than this: draw markers, so a run of one epoch is still visible
# per model besides its colour, so that a model drawn later does not hide one drawn earlier on the same values
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")


class TrainingLogError(ValueError):
    """A fold folder without a readable nnU-Net checkpoint log; the message names the folder or file."""


def _floats(values) -> List[float]:
    return [float(v) for v in values]


def read_training_log(fold_folder: Path) -> Dict:
    """Read nnU-Net's per-epoch logging from a trained (or training) fold folder.

    Args:
        fold_folder: an nnU-Net fold folder (``.../<trainer>__<plans>__<configuration>/fold_<f>``) with
            ``checkpoint_final.pth`` or, failing that, ``checkpoint_latest.pth``.
    Returns:
        ``checkpoint`` (the file read, str), ``trainer`` (class name stored in it), ``epochs`` ([0, 1, ..., E-1]),
        ``train_losses``, ``val_losses``, ``mean_fg_dice`` (pseudo Dice, fraction), ``ema_fg_dice``, ``lrs``,
        ``epoch_times_s`` (seconds per epoch, end minus start timestamp) and ``dice_per_class`` (one list of
        fractions per epoch), every list of length E: the epochs for which every one of these was logged.
    Raises:
        TrainingLogError: no checkpoint in the folder, or it cannot be read (truncated, not a torch file), or it
            has no nnU-Net logging.
    """
    import torch

    fold_folder = Path(fold_folder)
    candidates = [fold_folder / name for name in CHECKPOINT_ORDER if (fold_folder / name).is_file()]
    if not candidates:
        raise TrainingLogError(f"{fold_folder} has no {' or '.join(CHECKPOINT_ORDER)}: is it an nnU-Net fold folder "
                               f"whose training has saved a checkpoint?")
    path = candidates[0]
    try:
        # mmap: the weights and optimizer state are not read into memory, only the small logging dict is used
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # truncated zip, foreign file: torch raises many kinds
        raise TrainingLogError(f"cannot read the nnU-Net checkpoint {path}: {type(error).__name__}: {error}") from None
    logging = checkpoint.get("logging") if isinstance(checkpoint, dict) else None
    if not isinstance(logging, dict) or any(key not in logging for key in PER_EPOCH_KEYS):
        raise TrainingLogError(f"{path} holds no nnU-Net training log (no 'logging' entry with {PER_EPOCH_KEYS})")
    starts, ends = logging.get("epoch_start_timestamps", []), logging.get("epoch_end_timestamps", [])
    times = [end - start for start, end in zip(starts, ends)]
    per_class = [_floats(v) for v in logging.get("dice_per_class_or_region", [])]
    epochs = min(len(logging[key]) for key in PER_EPOCH_KEYS)
    epochs = min(epochs, len(times)) if times else epochs
    result = {"checkpoint": str(path), "trainer": checkpoint.get("trainer_name"), "epochs": list(range(epochs))}
    result.update({key: _floats(logging[key][:epochs]) for key in PER_EPOCH_KEYS})
    result["epoch_times_s"] = _floats(times[:epochs])
    result["dice_per_class"] = per_class[:epochs]
    return result


def plot_training_curves(runs: Mapping[str, Sequence[Path]], path: Path, caveat: Optional[str] = None) -> None:
    """Train loss, validation loss and EMA pseudo Dice against epoch: one panel each, one thin line per run.

    Args:
        runs: a model's display name -> its fold folders (one per fold x seed); one colour per model, in this
            order, so that a baseline and its Pool Skip model share one figure.
        path: the PNG to write (atomically).
        caveat: shown in the title (e.g. that the run is smoke-scale).
    Raises:
        TrainingLogError: a fold folder without a readable checkpoint log (named in the message).
        ValueError: no runs at all.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    logs = {name: [read_training_log(Path(folder)) for folder in folders] for name, folders in runs.items()}
    if not any(logs.values()):
        raise ValueError("plot_training_curves: no fold folders given")
    figure = new_figure(READER_WIDTH_INCHES, 4.8 + (0.4 if caveat else 0))
    axes_list = figure.subplots(1, len(PANELS), squeeze=False)[0]
    longest = max(len(log["epochs"]) for model_logs in logs.values() for log in model_logs)
    handles = []
    for index, (name, model_logs) in enumerate(logs.items()):
        style = {"color": f"C{index % 10}", "linestyle": LINE_STYLES[index % len(LINE_STYLES)],
                 "marker": MARKERS[index % len(MARKERS)] if longest <= MARKERS_UP_TO_EPOCHS else None,
                 "markerfacecolor": "none"}
        for log in model_logs:
            for axes, (key, _) in zip(axes_list, PANELS):
                axes.plot(log["epochs"], log[key], linewidth=0.9, alpha=0.8, markersize=4, **style)
        handles.append(Line2D([], [], linewidth=1.5, markersize=5, **style,
                              label=f"{name} ({len(model_logs)} run{'s' if len(model_logs) != 1 else ''})"))
    for axes, (key, label) in zip(axes_list, PANELS):
        axes.set_title(label)
        axes.set_xlabel("epoch (counted from 0, as in nnU-Net's log)")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if key == "ema_fg_dice":
            axes.set_ylim(0, 1)
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    set_title(figure, "Training curves from nnU-Net's checkpoint logs (one thin line per fold and seed)", caveat)
    save_figure(figure, path)
