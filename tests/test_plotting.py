"""The one way the reports save a figure: laid out, written at the reports' resolution, and freed."""

from __future__ import annotations

import matplotlib.image

from srt_trainer.plotting import DPI, pyplot, save_figure
from srt_trainer.scoring.report import plot_histograms


def test_save_figure_writes_the_png_and_frees_the_figure(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.bar(["a", "b"], [1, 2])
    path = save_figure(fig, tmp_path / "bars.png")
    assert path == tmp_path / "bars.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[:2] == (2 * DPI, 4 * DPI)
    assert fig.number not in plt.get_fignums()  # a long run drawing many reports does not keep them in memory


def test_a_report_figure_goes_through_it(tmp_path):
    rows = [{"ifd": 0.5 + i / 40, "rifd": 0.9 - i / 80} for i in range(40)]
    path = plot_histograms(rows, tmp_path / "scores.hist.png")
    assert path is not None and matplotlib.image.imread(path).shape[:2] == (round(3.6 * DPI), 10 * DPI)
    assert plot_histograms([{"ifd": None, "rifd": None}], tmp_path / "none.png") is None
