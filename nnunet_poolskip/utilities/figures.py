"""Figure helpers shared by the plots of every concern: a title that carries a run's caveat, and atomic PNG saving.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas (no pyplot state, no display needed).
Sizes are chosen for a reader who sees the PNG about 1600 px wide: ``READER_WIDTH_INCHES`` at ``DPI``.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Optional, Union

from nnunet_poolskip.utilities.atomic import atomic_path

DPI = 120
READER_WIDTH_INCHES = 13.3  # 1600 px at DPI
CAVEAT_COLOUR = "#b00020"


def new_figure(width: float, height: float):
    """A matplotlib Figure of ``width`` x ``height`` inches with constrained layout, drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def set_title(figure, title: str, caveat: Optional[str] = None, fontsize: float = 13) -> None:
    """Put ``title`` on top of ``figure`` and, when given, the caveat under it in bold red, wrapped to the width.

    The caveat belongs to the figure's title so that a figure copied out of its report still says what it is
    (e.g. that it comes from a smoke-scale run on synthetic data).
    """
    characters = max(40, int(figure.get_figwidth() * 72 / (0.6 * fontsize)))
    text = textwrap.fill(title, characters)
    if caveat:
        text += "\n" + textwrap.fill(caveat.strip(), characters)
    suptitle = figure.suptitle(text, fontsize=fontsize)
    if caveat:
        # one Text object cannot mix colours; colour the whole title red, the caveat in it is what must stand out
        suptitle.set_color(CAVEAT_COLOUR)
        suptitle.set_fontweight("bold")


def save_figure(figure, path: Union[str, os.PathLike], dpi: int = DPI) -> None:
    """Save ``figure`` to ``path`` atomically (complete or absent); the format follows the file ending."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
