"""Figures of the diagnostics (matplotlib, no display needed: figures are drawn with the Agg canvas).

- :func:`plot_layer_curves`: the paper's Figure 4 style: l2/l1 (and Hoyer, near-zero and dead-unit
  fractions) along the host conv layers in data-flow order, one line per model (colour, line style and
  marker per model); Pool Skip inner convs as dotted lines with x markers at their host's position. l2/l1 is drawn
  on a log scale: it scales like 1/sqrt(n) with the layer's weight count n, so 1x1 heads and transposed convs sit far
  above the 3x3x3 convs.
- :func:`plot_history`: the evolution over the recorded epochs of training.
Both write to a temporary name and rename, so a figure is either complete or absent, and put an optional caveat
(e.g. that the models come from a smoke-scale run) into the title (utilities/figures.py).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Union

from nnunet_poolskip.utilities.figures import new_figure, save_figure, set_title

LINE_STYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D")
PANELS = (("l2_l1", "l2 / l1"), ("hoyer", "Hoyer sparsity"), ("near_zero_fraction", "near-zero weights"),
          ("dead_fraction", "dead units"))


def _values(layers: Sequence[Dict], key: str) -> List[float]:
    return [float("nan") if layer.get(key) is None else float(layer[key]) for layer in layers]


def _stage_ticks(ax, hosts: Sequence[Dict]) -> None:
    """Dotted lines between stages and one tick label per stage, at its middle."""
    starts = [i for i, layer in enumerate(hosts) if i == 0 or layer["stage"] != hosts[i - 1]["stage"]]
    ends = starts[1:] + [len(hosts)]
    for start in starts[1:]:
        ax.axvline(start - 0.5, color="0.85", linestyle=":", linewidth=0.8)
    ax.set_xticks([(s + e - 1) / 2 for s, e in zip(starts, ends)])
    ax.set_xticklabels([hosts[s]["stage"] for s in starts], rotation=45, ha="right", fontsize=8)


def plot_layer_curves(models: Sequence[Dict], path: Union[str, os.PathLike], caveat: Optional[str] = None) -> None:
    """Per-layer curves of one or more model reports (``{"model", "layers"}`` as written by ``diagnose``).

    The x axis is the index of the host conv along the network (data-flow order), so a baseline and
    its Pool Skip model, whose host convs carry the same names, line up layer by layer. Panels whose
    values are all missing (dead units with ``--weights-only``) are left out. Reports with the same ``model``
    label (several folds or seeds of one model) share a colour and one legend entry, drawn as thinner lines.
    ``caveat``: a first title line (e.g. that the run is smoke-scale).
    """
    panels = [(key, label) for key, label in PANELS
              if any(layer.get(key) is not None for model in models for layer in model["layers"])]
    fig = new_figure(11, 2.6 * len(panels) + 1.0)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    labels = list(dict.fromkeys(model["model"] for model in models))
    runs = {label: sum(model["model"] == label for model in models) for label in labels}
    colors = [f"C{i}" for i in range(10)]
    drawn = set()
    for model in models:
        hosts = [layer for layer in model["layers"] if layer["kind"] == "host"]
        position = {layer["name"]: i for i, layer in enumerate(hosts)}
        inner = [layer for layer in model["layers"] if layer["kind"] == "poolskip" and layer.get("host") in position]
        index = labels.index(model["model"])
        color = colors[index % len(colors)]
        # line style and marker per model too, and an earlier model's markers larger and hollow: a model whose
        # values equal another's (same layers, little training) stays visible under it
        style = {"linestyle": LINE_STYLES[index % len(LINE_STYLES)], "marker": MARKERS[index % len(MARKERS)],
                 "markersize": max(3.0, 7.0 - 2.0 * index), "markerfacecolor": "none" if index == 0 else color}
        several = runs[model["model"]] > 1
        first = model["model"] not in drawn
        drawn.add(model["model"])
        for ax, (key, label) in zip(axes, panels):
            ax.plot(range(len(hosts)), _values(hosts, key), color=color, **style,
                    linewidth=0.8 if several else 1.3,
                    label=model["model"] + (f" ({runs[model['model']]} runs)" if several else "") if first else None)
            if inner and any(layer.get(key) is not None for layer in inner):
                ax.plot([position[layer["host"]] for layer in inner], _values(inner, key), color=color,
                        linestyle=":", marker="x", markersize=5, linewidth=0.8 if several else 1.1,
                        label=f"{model['model']} (Pool Skip inner convs)" if first else None)
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3, which="both")
            if key == "l2_l1":  # 1x1 heads and small layers sit an order of magnitude above 3x3x3 convs
                ax.set_yscale("log")
    first_hosts = [layer for layer in models[0]["layers"] if layer["kind"] == "host"]
    _stage_ticks(axes[-1], first_hosts)
    axes[-1].set_xlabel("conv layer along the network (input to output)")
    for ax, (key, _) in zip(axes, panels):
        if key == "dead_fraction":  # a fraction of units: keep 0 and 1 in view
            ax.set_ylim(-0.05, 1.05)
    handles, legend_labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="outside lower center", ncol=2, fontsize=8)
    title = "Per-layer weight sparsity and dead units" + (
        f" ({models[0].get('checkpoint', '')} checkpoint)" if models[0].get("checkpoint") else "")
    set_title(fig, title, caveat, fontsize=12)
    save_figure(fig, path)


def plot_history(models: Sequence[Dict], path: Union[str, os.PathLike], caveat: Optional[str] = None) -> bool:
    """Evolution of the weight diagnostics over training for the models that have a recorded history.

    One row per such model: the l2/l1 curve along the host convs for every recorded epoch (colour =
    epoch), and the mean and maximum l2/l1 over host convs against the epoch. Returns False (and
    writes nothing) when no model has a history. ``caveat``: a title line above the rows.
    """
    from matplotlib import cm
    from matplotlib import colors as mcolors
    from matplotlib.ticker import MaxNLocator

    with_history = [model for model in models if len(model.get("history") or []) > 0]
    if not with_history:
        return False
    fig = new_figure(13, 3.4 * len(with_history) + 0.9)
    axes = fig.subplots(len(with_history), 2, squeeze=False, gridspec_kw={"width_ratios": [2.2, 1]})
    for row, model in enumerate(with_history):
        history = model["history"]
        epochs = [record["epoch"] for record in history]
        norm = mcolors.Normalize(vmin=min(epochs), vmax=max(max(epochs), min(epochs) + 1))
        ax_layers, ax_epochs = axes[row]
        for record in history:
            hosts = [layer for layer in record["layers"] if layer["kind"] == "host"]
            ax_layers.plot(range(len(hosts)), _values(hosts, "l2_l1"), color=cm.viridis(norm(record["epoch"])),
                           linewidth=1.0)
        _stage_ticks(ax_layers, [layer for layer in history[-1]["layers"] if layer["kind"] == "host"])
        ax_layers.set_ylabel("l2 / l1")
        ax_layers.set_yscale("log")
        ax_layers.set_title(f"{model['model']}: l2/l1 along the network per recorded epoch", fontsize=9)
        ax_layers.grid(True, alpha=0.3)
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cm.viridis), ax=ax_layers, label="epoch")
        for kind, style in (("host", "-"), ("poolskip", "--")):
            means, maxima = [], []
            for record in history:
                values = [layer["l2_l1"] for layer in record["layers"]
                          if layer["kind"] == kind and layer["l2_l1"] is not None]
                means.append(sum(values) / len(values) if values else float("nan"))
                maxima.append(max(values) if values else float("nan"))
            if all(v != v for v in means):  # no layers of this kind
                continue
            ax_epochs.plot(epochs, means, "C0" + style, marker=".", label=f"mean ({kind})")
            ax_epochs.plot(epochs, maxima, "C3" + style, marker=".", label=f"max ({kind})")
        ax_epochs.set_xlabel("epoch")
        ax_epochs.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_epochs.set_ylabel("l2 / l1")
        ax_epochs.grid(True, alpha=0.3)
        ax_epochs.legend(fontsize=7)
    set_title(fig, "Weight diagnostics over training", caveat, fontsize=12)
    save_figure(fig, path)
    return True
