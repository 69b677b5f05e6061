"""The figures of the reports (score histograms, the selection funnel and histograms, the win / tie / lose chart):
matplotlib without a display, and one way to save a figure."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

DPI = 110


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend: reports are written on machines without a display (CI, clusters).
    Imported on first use, since most commands never draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` (PNG by its suffix) and free it; returns the path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path
