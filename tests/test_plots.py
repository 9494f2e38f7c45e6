"""Plots a reader can read: distinct runs, labels that do not overlap, error bars over seeds."""
import itertools
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from kdcore import create_model, load_dataset, plots  # noqa: E402


@pytest.fixture
def shown(monkeypatch):
    """The figures the plot functions show (they call plt.show(), then close the figure)."""
    figs = []
    monkeypatch.setattr(plt, "show", lambda: figs.append(plt.gcf()))
    return figs


def _history(terms, epochs=3):
    h = pd.DataFrame({"epoch": range(1, epochs + 1)})
    for k, t in enumerate(terms):
        h[f"loss_{t}"] = np.linspace(2, 1, epochs) / (k + 1)
    h["train_loss"] = h[[f"loss_{t}" for t in terms]].sum(axis=1)
    h["val_acc"] = np.linspace(0.3, 0.5, epochs)
    return h


def test_every_run_has_its_own_colour_and_line_style(shown):
    runs = {"teacher": ["ce"], "baseline": ["ce"], "kd+at": ["ce", "kd", "at"], "at:shifted": ["ce", "at"],
            "dkd": ["ce", "dkd"], "sp": ["ce", "sp"]}  # 05_bonus: 15 loss lines
    plots.history({label: _history(terms) for label, terms in runs.items()})
    ax_loss, ax_val = shown[-1].axes
    assert len(ax_loss.lines) == 15

    def look(line):  # colour and dash pattern as drawn
        return matplotlib.colors.to_hex(line.get_color()), str(line._unscaled_dash_pattern)

    val = [look(line) for line in ax_val.lines]
    assert [line.get_label() for line in ax_val.lines] == list(runs)
    assert len({c for c, _ in val}) == len({d for _, d in val}) == len(runs)  # each run its own colour AND style
    assert {look(line) for line in ax_loss.lines} == set(val)  # a run looks the same in both panels
    assert [t.get_text() for t in ax_loss.get_legend().get_texts()] == ["ce", "kd", "at", "total", "dkd", "sp"]
    styles = [plots.run_style(k) for k in range(100)]
    assert len({(matplotlib.colors.to_hex(s["color"]), str(s["linestyle"])) for s in styles}) == 100


def _overlaps(boxes):
    return [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


def test_gradcam_titles_and_row_labels_do_not_overlap(shown):
    data = load_dataset("synthetic", synthetic=dict(train_size=40, val_size=20, test_size=20, image_size=64))
    data.classes = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                    "PermanentCrop", "Residential", "River", "SeaLake"]  # EuroSAT's, the longest names
    models = {"best: student_depthwise_skip (kd)": create_model("student_light", 10),
              "worst: student_separable (kd)": create_model("cnn_small", 10)}
    plots.gradcam_grid(data, models, n=6)
    fig = shown[-1]
    canvas = FigureCanvasAgg(fig)  # shown figures are closed: draw them on a fresh canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [t for ax in fig.axes for t in (ax.title, ax.yaxis.label) if t.get_text()]
    assert len(texts) == 3 * 6 + 3
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert not _overlaps(boxes)
    page = fig.bbox
    assert all(b.x0 >= page.x0 and b.x1 <= page.x1 and b.y0 >= page.y0 and b.y1 <= page.y1 for b in boxes)


def test_multi_seed_bars_have_error_bars(shown):
    def runs(label, accs, params):
        return SimpleNamespace(label=label, runs=pd.DataFrame({"test_acc": accs}), efficiency={"params": params})

    plots.seed_bars([runs("simplenet (kd)", [0.70, 0.74], 94762), runs("student_light (kd)", [0.60, 0.66], 19546)])
    acc, params = shown[-1].axes
    (bars,) = [c for c in acc.containers if isinstance(c, ErrorbarContainer)]
    _, _, (segments,) = bars.lines
    lengths = [seg[1][1] - seg[0][1] for seg in segments.get_segments()]
    assert np.allclose(lengths, [2 * np.std([0.70, 0.74], ddof=1), 2 * np.std([0.60, 0.66], ddof=1)])
    assert not [c for c in params.containers if isinstance(c, ErrorbarContainer)]  # one number per run: no bar
    assert "std over seeds" in acc.get_title()


def test_per_class_table_has_4_digits_everywhere():
    table = pd.DataFrame({"class": ["cat", "dog"], "precision": [0.0, 0.1], "recall": [1.0, 0.5], "f1": [0.18181818, 0.0],
                          "support": [10, 10]})
    shown = plots.per_class({"per_class": table}, {"per_class": table.assign(f1=[0.3125, 1.0])})
    assert shown.index.tolist() == ["cat", "dog"]
    assert shown.loc["cat"].tolist() == ["0.0000", "1.0000", "0.1818", 10, "0.3125"]
    assert shown.loc["dog", "precision"] == "0.1000" and shown.loc["dog", "teacher_f1"] == "1.0000"
