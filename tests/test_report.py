"""lmscope.report: well-formed SVG, the right marks and colours, escaping, and self-contained pages."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest

from lmscope.report import (
    Figure,
    Text,
    bar_chart,
    heatmap,
    histogram,
    line_chart,
    page,
    save_page,
    scatter,
    table,
)


def parse(fig: Figure) -> ET.Element:
    return ET.fromstring(fig.svg)  # raises unless the SVG is well-formed XML


def group(root: ET.Element, cls: str) -> ET.Element:
    found = [g for g in root.iter("g") if g.get("class") == cls]
    assert len(found) == 1, f"expected one <g class={cls!r}>, found {len(found)}"
    return found[0]


def rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def cells(fig: Figure) -> dict[tuple[int, int], ET.Element]:
    return {(int(r.get("y")), int(r.get("x"))): r for r in group(parse(fig), "cells").iter("rect")}


# ------------------------------------------------------------------------------------------------ heatmap


def test_heatmap_one_rect_per_cell_with_tooltips():
    values = np.arange(12, dtype=float).reshape(3, 4) - 5
    fig = heatmap(
        values, row_labels=["L0", "L1", "L2"], col_labels=["a", "b", "c", "d"], value_format="{:.1f}"
    )
    grid = cells(fig)
    assert len(grid) == 3 * 4
    assert grid[(1, 2)].find("title").text == "L1, c: 1.0"
    assert grid[(0, 0)].find("title").text == "L0, a: -5.0"
    assert str(fig) == fig.svg and fig._repr_svg_().startswith('<svg xmlns="http://www.w3.org/2000/svg"')


def test_heatmap_diverging_colours_and_nan():
    values = np.array([[-2.0, 0.0, 3.0], [1.0, np.nan, -0.5]])
    grid = cells(heatmap(values))
    r, g, b = rgb(grid[(0, 2)].get("fill"))  # the largest value: red
    assert r > 150 and r > b + 80
    r, g, b = rgb(grid[(0, 0)].get("fill"))  # the most negative: blue (the range is symmetric: +-3)
    assert b > r + 60
    assert all(c > 235 for c in rgb(grid[(0, 1)].get("fill")))  # the centre: near white
    r, g, b = rgb(grid[(1, 1)].get("fill"))  # NaN: grey
    assert r == g == b and 150 < r < 220
    assert grid[(1, 1)].find("title").text.endswith(": nan")


def test_heatmap_center_shifts_the_white_point():
    grid = cells(heatmap([[1.0, 2.0, 3.0]], center=2.0))
    assert all(c > 235 for c in rgb(grid[(0, 1)].get("fill")))
    assert rgb(grid[(0, 0)].get("fill"))[2] > rgb(grid[(0, 0)].get("fill"))[0]  # below the centre: blue


def test_heatmap_sequential_runs_light_to_dark():
    for fig in (heatmap([[0.0, 5.0, 10.0]], center=None), heatmap([[0.0, 5.0, 10.0]], cmap="sequential")):
        grid = cells(fig)
        brightness = [sum(rgb(grid[(0, j)].get("fill"))) for j in range(3)]
        assert brightness[0] > brightness[1] > brightness[2]
        assert brightness[0] > 3 * 240


def test_heatmap_colorbar_and_cell_values():
    root = parse(heatmap([[-1.0, 0.5]], value_format="{:.2f}"))
    bar_texts = [t.text for t in group(root, "colorbar").iter("text")]
    assert bar_texts == ["1", "-1", "0"]  # max, min, centre
    assert [t.text for t in group(root, "cell-values").iter("text")] == ["-1.00", "0.50"]


def test_heatmap_1x1_and_accepts_objects_with_tolist():
    class FakeTensor:  # like a torch tensor numpy cannot read directly
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("Can't call numpy() on Tensor that requires grad")

        def tolist(self):
            return [[2.0]]

    assert len(cells(heatmap([[2.0]]))) == 1
    assert len(cells(heatmap(FakeTensor()))) == 1
    torch = pytest.importorskip("torch")
    assert len(cells(heatmap(torch.ones(2, 3, requires_grad=True)))) == 6
    assert len(cells(heatmap(torch.ones(2, 3, dtype=torch.bfloat16)))) == 6


def test_heatmap_large_is_small_enough_and_thins_labels():
    values = np.random.default_rng(0).normal(size=(30, 600))
    fig = heatmap(values, col_labels=[f"tok{j}" for j in range(600)])
    root = parse(fig)
    assert len(group(root, "cells").findall("rect")) == 30 * 600
    assert len(fig.svg.encode()) < 2.5e6
    assert not [g for g in root.iter("g") if g.get("class") == "cell-values"]  # no per-cell text
    n_labels = len(group(root, "labels").findall("text"))
    assert 30 < n_labels < 30 + 600  # every row labelled, only some columns


def test_heatmap_escapes_labels():
    fig = heatmap([[1.0, 2.0]], row_labels=["a & b"], col_labels=["<bos>", '"q"'], title="<script>")
    assert "&lt;bos&gt;" in fig.svg and "<bos>" not in fig.svg
    assert "a &amp; b" in fig.svg and "<script>" not in fig.svg
    root = parse(fig)
    assert not list(root.iter("bos"))
    assert cells(fig)[(0, 0)].find("title").text == "a & b, <bos>: 1.00"


def test_control_characters_stay_valid_xml():
    fig = heatmap([[1.0]], col_labels=["\x00tok\x0b"])
    assert "\\x00tok\\x0b" in parse(fig).find(".//title").text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": [1.0, 2.0]}, "2-D array; got shape (2,)"),
        ({"values": np.zeros((0, 3))}, "empty"),
        (
            {"values": np.zeros((2, 3)), "row_labels": ["a"]},
            "row_labels must have 2 entries (one per row); got 1",
        ),
        ({"values": np.zeros((2, 3)), "col_labels": list("abcd")}, "col_labels must have 3 entries"),
        ({"values": np.zeros((2, 3)), "cmap": "viridis"}, "cmap must be"),
        ({"values": np.zeros((2, 3)), "value_format": "{:.2f} {}"}, "value_format"),
        ({"values": [[1.0, 2.0], [3.0]]}, "rectangular"),
    ],
)
def test_heatmap_validates_input(kwargs, message):
    with pytest.raises(ValueError) as err:
        heatmap(**kwargs)
    assert message in str(err.value)


# ------------------------------------------------------------------------------------------- other charts


def test_bar_chart_positive_and_negative_sides():
    values = [0.5, -1.5, 2.0, float("nan")]
    labels = ["L0H1", "<bos>", "c", "missing"]
    for horizontal in (True, False):
        fig = bar_chart(values, labels, horizontal=horizontal)
        root = parse(fig)
        bars = group(root, "bars").findall("rect")
        assert len(bars) == 3  # NaN draws no bar
        zero = next(line for line in root.iter("line") if line.get("class") == "zero")
        pos = "x1" if horizontal else "y1"
        zero_px = float(zero.get(pos))
        by_label = {b.find("title").text.split(":")[0]: b for b in bars}
        lo = "x" if horizontal else "y"
        size = "width" if horizontal else "height"
        start = {k: float(b.get(lo)) for k, b in by_label.items()}
        end = {k: float(b.get(lo)) + float(b.get(size)) for k, b in by_label.items()}
        positive_side, negative_side = (("L0H1", "c"), ("<bos>",))
        if not horizontal:  # y grows downwards: positive bars sit above the zero line
            positive_side, negative_side = negative_side, positive_side
        for k in positive_side:
            assert start[k] >= zero_px - 0.1
        for k in negative_side:
            assert end[k] <= zero_px + 0.1
        assert by_label["L0H1"].get("fill") != by_label["<bos>"].get("fill")
        assert by_label["<bos>"].find("title").text == "<bos>: -1.50"
        assert "<bos>" not in fig.svg


def test_bar_chart_label_mismatch():
    with pytest.raises(ValueError, match="labels must have 3 entries .* got 2"):
        bar_chart([1.0, 2.0, 3.0], ["a", "b"])


def test_line_chart_series_legend_and_nan_gap():
    fig = line_chart(
        {"clean": [3.0, 2.0, 1.0], "corrupt": [3.0, float("nan"), 2.5]}, x=[0, 1, 2], xlabel="layer"
    )
    root = parse(fig)
    series = group(root, "lines").findall("g")
    assert len(series) == 2
    assert series[1].find("path").get("d").count("M") == 2  # the NaN breaks the line
    assert [t.text for t in group(root, "legend").iter("text")] == ["clean", "corrupt"]
    assert len(series[0].findall("circle")) == 3
    x_ticks = [t.text for t in group(root, "frame").iter("text") if t.get("text-anchor") == "middle"]
    assert x_ticks == ["0", "1", "2"]  # integer x gets integer ticks, not 0.5 steps


def test_line_chart_log_y_and_errors():
    root = parse(line_chart({"loss": [100.0, 10.0, 1.0, 0.1]}, log_y=True))
    ticks = [t.text for t in group(root, "frame").iter("text")]
    assert {"0.1", "1", "10", "100"} <= set(ticks)
    with pytest.raises(ValueError, match="log_y needs positive values"):
        line_chart({"a": [1.0, -1.0]}, log_y=True)
    with pytest.raises(ValueError, match="x has 2 values but series 'a' has 3"):
        line_chart({"a": [1.0, 2.0, 3.0]}, x=[0, 1])
    with pytest.raises(ValueError, match="non-empty dict"):
        line_chart({})


def test_scatter_points_and_diagonal():
    x, y = [0.0, 1.0, 2.0, float("nan")], [0.1, 0.9, 2.2, 1.0]
    root = parse(scatter(x, y, labels=["a", "b", "<c>", "d"], diagonal=True))
    points = group(root, "points").findall("circle")
    assert len(points) == 3
    assert points[2].find("title").text == "<c>: (2, 2.2)"
    diag = next(line for line in root.iter("line") if line.get("class") == "diagonal")
    dx = float(diag.get("x2")) - float(diag.get("x1"))
    dy = float(diag.get("y1")) - float(diag.get("y2"))
    assert dx > 0 and math.isclose(dx, dy * 520 / 300, rel_tol=0.02)  # corner to corner of equal ranges
    with pytest.raises(ValueError, match="same length; got 2 and 3"):
        scatter([1, 2], [1, 2, 3])


def test_histogram_counts_in_tooltips():
    values = np.array([0.0, 0.1, 0.2, 0.9, 1.0, np.nan])
    root = parse(histogram(values, bins=2))
    bars = group(root, "bars").findall("rect")
    assert [b.find("title").text for b in bars] == ["[0, 0.5): 3", "[0.5, 1]: 2"]
    assert float(bars[0].get("height")) > float(bars[1].get("height"))
    parse(histogram(np.random.default_rng(0).standard_cauchy(1000), log_y=True))
    with pytest.raises(ValueError, match="no finite values"):
        histogram([np.nan, np.inf])


def test_constant_inputs_do_not_divide_by_zero():
    for fig in (
        heatmap(np.zeros((2, 2))),
        heatmap(np.full((2, 2), 3.0), center=None),
        heatmap(np.full((2, 2), np.nan)),
        bar_chart([0.0, 0.0], ["a", "b"]),
        line_chart({"flat": [1.0, 1.0]}),
        scatter([1.0], [1.0], diagonal=True),
        histogram([5.0, 5.0]),
    ):
        for element in parse(fig).iter():
            for name, value in element.attrib.items():
                assert "nan" not in value and "inf" not in value, (name, value)


# ---------------------------------------------------------------------------------------- html and files


class Parsed(HTMLParser):
    """What a page shows, read back by an HTML parser: the text of each tag, table cells, embedded SVGs."""

    def __init__(self, html: str):
        super().__init__()
        self.texts: dict[str, list[str]] = {}  # tag -> the text of each such element
        self.tags: list[str] = []
        self.rows: list[list[tuple[str, str]]] = []  # table rows: (cell text, class) per cell
        self._open: list[str] = []
        self.feed(html)
        self.svgs = [ET.fromstring(m) for m in re.findall(r"<svg .*?</svg>", html, re.S)]

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("meta", "br"):
            return
        self._open.append(tag)
        self.texts.setdefault(tag, []).append("")
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self.rows[-1].append(("", dict(attrs).get("class") or ""))

    def handle_endtag(self, tag):
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag) :]

    def handle_data(self, data):
        for tag in set(self._open):
            self.texts[tag][-1] += data
        if self._open and self._open[-1] in ("td", "th"):
            text, cls = self.rows[-1][-1]
            self.rows[-1][-1] = (text + data, cls)


def test_table_escapes_and_formats():
    html = table([{"name": "<bos>", "score": 0.123456, "n": np.int64(3)}, {"name": "a & b", "extra": None}])
    parsed = Parsed(html)
    assert "bos" not in parsed.tags  # the token is text, not a tag
    header, first, second = ([text for text, _ in row] for row in parsed.rows)
    assert header == ["name", "score", "n", "extra"]
    assert first == ["<bos>", "0.123", "3", ""] and second == ["a & b", "", "", ""]
    assert [cls for _, cls in parsed.rows[1]] == ["", "num", "num", ""]  # numbers align right
    rows = Parsed(table([[1, 2.5]], columns=["a", "b"], float_format="{:.1f}")).rows
    assert [float(text) for text, _ in rows[1]] == [1.0, 2.5]
    with pytest.raises(ValueError, match="row 0 has 1 cells; expected 2"):
        table([[1]], columns=["a", "b"])


def test_page_is_self_contained_and_escaped(tmp_path):
    values = [[1.0, -1.0]]
    fig = heatmap(values, col_labels=["<bos>", "x"])
    html = page(
        "Report <1>",
        [
            ("Map", fig),
            ("Table", table([{"a": 1.0}])),
            ("Notes", Text("x < y\n\nsecond")),
            ("Both", [fig, Text("t")]),
        ],
        subtitle="run & seed",
    )
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    for banned in ("http://", "https://", "src=", "<link", "<script", "url("):
        assert banned not in html
    parsed = Parsed(html)
    assert parsed.texts["h1"] == ["Report <1>"] and parsed.texts["title"][0] == "Report <1>"
    assert parsed.texts["h2"] == ["Map", "Table", "Notes", "Both"]
    assert [p for p in parsed.texts["p"] if p != "run & seed"] == ["x < y", "second", "t"]
    assert "run & seed" in parsed.texts["p"] and "bos" not in parsed.tags
    # Both figures carry the numbers they were given: one cell per value, each tooltip its value.
    assert len(parsed.svgs) == 2
    for svg in parsed.svgs:
        tips = [r.find("title").text for r in group(svg, "cells").iter("rect")]
        assert [float(t.rsplit(": ", 1)[1]) for t in tips] == values[0]
        assert [t.rsplit(": ", 1)[0] for t in tips] == ["0, <bos>", "0, x"]
    with pytest.raises(TypeError, match="section 'bad'"):
        page("t", [("bad", 42)])
    out = save_page(html, tmp_path / "sub" / "report.html")
    assert out.read_text(encoding="utf-8") == html


def test_bar_chart_in_a_page_reads_back_its_numbers():
    values, labels = [0.25, -1.5, 3.0], ["a", "<b>", "c"]
    svg = Parsed(page("t", [("bars", bar_chart(values, labels, value_format="{:.3f}"))])).svgs[0]
    bars = group(svg, "bars").findall("rect")
    tips = dict(b.find("title").text.rsplit(": ", 1) for b in bars)
    assert {k: float(v) for k, v in tips.items()} == dict(zip(labels, values))
    # bar lengths are proportional to |value| (one pixel scale for every bar)
    widths = [float(b.get("width")) for b in bars]
    assert widths == pytest.approx([w * widths[2] / 3.0 for w in (0.25, 1.5, 3.0)], rel=0.02)


def test_report_modules_import_each_other_in_one_direction_only():
    import ast
    import pathlib

    import lmscope.report as report

    folder = pathlib.Path(report.__file__).parent
    imports = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        imports[path.stem] = {
            (n.module or "").lstrip(".")
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.level == 1
        }
    for a, deps in imports.items():
        for b in deps:
            assert a not in imports.get(b, set()), f"report/{a}.py and report/{b}.py import each other"


def test_figure_save_svg_and_html_leaves_no_temp_file(tmp_path):
    fig = bar_chart([1.0, -2.0], ["a", "b"], title="Effects")
    svg_path = fig.save(tmp_path / "bars.svg")
    ET.parse(svg_path)  # a standalone SVG file is well-formed XML
    assert 'xmlns="http://www.w3.org/2000/svg"' in svg_path.read_text()
    html_path = fig.save(tmp_path / "bars.html")
    text = html_path.read_text()
    assert "<title>Effects</title>" in text and "<svg " in text and "http" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.html", "bars.svg"]


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    save_page("old", path)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("lmscope.runs.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_page("new", path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
