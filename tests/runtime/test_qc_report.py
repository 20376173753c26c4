"""The QC overlay PNG and HTML summary (runtime/qc_report.py), on hand-made scans and verdict documents.

The tiles sit at core.tiling.TileBox boxes; the scans are hand-made runtime/tiles.py TileResult and
FieldScan objects, with no model run.
"""

from __future__ import annotations

import copy
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mscvision.runtime import qc_report
from mscvision.runtime.qc_report import (ABSTAINED_GREY, FILL_ALPHA, fraction_chart, overlay_layout, render_overlay,
                                         render_summary, task_colours, tile_mark, title_lines)
from mscvision.core.tiling import TileBox
from mscvision.runtime.tiles import FieldScan, TileResult
from mscvision.runtime.svg import GREEN, RED, esc

HOSTILE = "<img src=x onerror=alert(1)>.tif"
TASKS = [("differentiation", ["undifferentiated", "differentiated"]), ("morphology", ["spindle", "flattened"])]
GREY_LEVEL = 128


def tile(r: int, c: int, side: int, status: str = "ok", labels: dict | None = None, flagged: bool = False,
         abstained: dict | None = None) -> TileResult:
    box = TileBox(r, c, r * side, c * side, (r + 1) * side, (c + 1) * side)
    if labels is None:
        labels = {} if status in ("background", "error") else {"differentiation": "undifferentiated",
                                                                 "morphology": "spindle"}
    return TileResult(box, 0.0 if status == "background" else 0.6, status, flagged, abstained or {}, "", None,
                      labels, None)


SPECIAL = {  # (row, col) -> a tile unlike the plain undifferentiated/spindle ones
    (0, 1): dict(labels={"differentiation": "differentiated", "morphology": "flattened"}),
    (0, 2): dict(status="review", flagged=True, labels={"differentiation": "review", "morphology": "review"}),
    (0, 3): dict(status="review", abstained={"differentiation": True},
                 labels={"differentiation": "review", "morphology": "flattened"}),
    (0, 4): dict(status="error"),
    (0, 5): dict(status="background"),
}


def make_scan(thumbnail: bool = True, path: str = "plate1/A1_field.tif") -> FieldScan:
    """A 600×800 field of 100-px tiles (6 × 8) with a 60×80 thumbnail (scale 0.1)."""
    side, rows, cols = 100, 6, 8
    tiles = [tile(r, c, side, **SPECIAL.get((r, c), {})) for r in range(rows) for c in range(cols)]
    thumb = np.full((60, 80), GREY_LEVEL, np.uint8) if thumbnail else None
    return FieldScan(path, 600, 800, 1, 16, 0.65, side, tiles=tiles, thumbnail=thumb, scale=0.1)


def tile_pixels(png: Path, scan: FieldScan, panel: int, r: int, c: int) -> np.ndarray:
    """The pixels of tile (r, c) in one panel of the written PNG, at the layout's geometry."""
    layout = overlay_layout(scan, TASKS)
    box = next(t.box for t in scan.tiles if (t.box.row, t.box.col) == (r, c))
    ox, oy = layout.panel_origins[panel]
    s = layout.scale
    x0, y0, x1, y1 = (round(v * s) for v in (box.x0, box.y0, box.x1, box.y1))
    return np.asarray(Image.open(png).convert("RGB"))[oy + y0:oy + y1, ox + x0:ox + x1]


def blend(colour, base=GREY_LEVEL) -> np.ndarray:
    return np.array([(c * FILL_ALPHA + base * (255 - FILL_ALPHA)) / 255 for c in colour])


COLOURS = task_colours(TASKS)


def nearest_class(pixel: np.ndarray, base=GREY_LEVEL) -> tuple[str, str]:
    """(task, class) whose translucent colour over ``base`` is nearest ``pixel``, over every task's classes."""
    pairs = [(task, c) for task, colours in COLOURS.items() for c in colours]
    return min(pairs, key=lambda tc: np.abs(blend(COLOURS[tc[0]][tc[1]], base) - pixel).sum())


def centre(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    return pixels[h // 2, w // 2].astype(int)


# --- overlay --------------------------------------------------------------------------------------

def test_overlay_size_and_one_panel_per_task(tmp_path):
    scan = make_scan()
    out = render_overlay(scan, TASKS, tmp_path / "overlays" / "A1.png")
    assert out == tmp_path / "overlays" / "A1.png"
    layout = overlay_layout(scan, TASKS)
    with Image.open(out) as im:
        assert im.size == layout.size
    pw, ph = layout.panel_size
    assert pw / ph == pytest.approx(80 / 60)  # the thumbnail's aspect, enlarged: it is tiny
    assert pw >= qc_report.MIN_PANEL_SIDE and layout.size[0] >= 2 * pw and layout.size[1] > ph
    (x0, y0), (x1, y1) = layout.panel_origins
    assert y0 == y1 and x1 >= x0 + pw and x1 + pw <= layout.size[0]  # side by side, both inside the PNG
    assert len(overlay_layout(scan, TASKS[:1]).panel_origins) == 1
    assert not [p for p in out.parent.iterdir() if p.name != "A1.png"]  # no partial file left behind


def test_tiles_carry_their_class_colour_per_task(tmp_path):
    scan = make_scan()
    out = render_overlay(scan, TASKS, tmp_path / "o.png")
    for panel, (task, classes) in enumerate(TASKS):
        plain = centre(tile_pixels(out, scan, panel, 2, 2))
        assert nearest_class(plain) == (task, classes[0])
        assert np.abs(plain - blend(COLOURS[task][classes[0]])).max() <= 2
        other = centre(tile_pixels(out, scan, panel, 0, 1))
        assert nearest_class(other) == (task, classes[1])
    every = [colour for colours in COLOURS.values() for colour in colours.values()]
    assert len(set(every)) == len(every)  # no two classes of the picture share a colour


def test_flagged_error_background_and_abstained_marks(tmp_path):
    scan = make_scan()
    out = render_overlay(scan, TASKS, tmp_path / "o.png")
    for panel in (0, 1):
        assert tuple(centre(tile_pixels(out, scan, panel, 0, 2))) == qc_report.FLAG_RED  # the cross's centre
        assert tuple(centre(tile_pixels(out, scan, panel, 0, 4))) == (0, 0, 0)  # error: black
        background = tile_pixels(out, scan, panel, 0, 5)
        assert (background == GREY_LEVEL).all()  # left clear: the tissue as it is
    abstained = tile_pixels(out, scan, 0, 0, 3).reshape(-1, 3).astype(int)
    grey = (np.abs(abstained - np.array(ABSTAINED_GREY)).sum(axis=1) <= 3).mean()
    assert 0.25 < grey < 0.8  # hatched, not filled: the tissue shows between the stripes
    untouched = (abstained == GREY_LEVEL).all(axis=1).mean()
    assert untouched > 0.2  # no class colour under the hatching
    # the same tile abstained only for differentiation: morphology shows its class
    assert nearest_class(centre(tile_pixels(out, scan, 1, 0, 3))) == ("morphology", "flattened")


def test_tile_mark_precedence():
    classes = TASKS[0][1]
    t = tile(0, 0, 10, status="review", flagged=True, abstained={"differentiation": True})
    assert tile_mark(t, "differentiation", classes) == "flagged"  # the gate speaks for the whole tile
    assert tile_mark(tile(0, 0, 10, status="error"), "differentiation", classes) == "error"
    assert tile_mark(tile(0, 0, 10, status="background"), "differentiation", classes) == "background"
    unknown = tile(0, 0, 10, labels={"differentiation": "not-a-class"})
    assert tile_mark(unknown, "differentiation", classes) == "abstained"  # no call for this task
    assert tile_mark(tile(0, 0, 10), "differentiation", classes) == "undifferentiated"


def test_overlay_without_thumbnail_draws_on_white(tmp_path):
    scan = make_scan(thumbnail=False)
    out = render_overlay(scan, TASKS, tmp_path / "o.png")
    layout = overlay_layout(scan, TASKS)
    with Image.open(out) as im:
        assert im.size == layout.size
    assert (tile_pixels(out, scan, 0, 0, 5) == 255).all()  # background on white stays white
    assert tuple(centre(tile_pixels(out, scan, 0, 0, 2))) == qc_report.FLAG_RED
    assert nearest_class(centre(tile_pixels(out, scan, 0, 1, 1)), base=255) == ("differentiation", "undifferentiated")


def test_overlay_of_an_unreadable_image(tmp_path):
    scan = FieldScan("bad.tif", 0, 0, 0, 0, None, 112, error="truncated TIFF: 3 of 9 strips", tiles=[],
                     thumbnail=None, scale=0.0)
    out = render_overlay(scan, TASKS, tmp_path / "bad.png")
    with Image.open(out) as im:
        assert im.size == overlay_layout(scan, TASKS).size
    lines = title_lines(scan)
    assert lines[0] == "bad.tif" and any(line.startswith("error: truncated TIFF") for line in lines)


def test_title_counts_tiles_per_status():
    scan = make_scan()
    scan.doubts = ["pixel size unknown: no metadata and no declared pixel size"]
    lines = title_lines(scan)
    assert lines[0] == "A1_field.tif"
    n = {s: sum(t.status == s for t in scan.tiles) for s in ("ok", "review", "error", "background")}
    for status, count in n.items():
        assert f"{status} {count}" in lines[1]
    assert "1 flagged" in lines[1] and "doubt: pixel size unknown" in lines[-1]


def test_hostile_file_name_in_the_overlay_title(tmp_path):
    scan = make_scan(path=f"plate/{HOSTILE}")
    out = render_overlay(scan, TASKS, tmp_path / "h.png")  # drawn as text, nothing to escape; must not fail
    assert out.exists() and title_lines(scan)[0] == HOSTILE


# --- summary --------------------------------------------------------------------------------------

def criterion(text, kind, result, estimate, low=None, high=None, task=None, cls=None, reason=""):
    op, limit = text.split()[-2], float(text.split()[-1])
    return {"criterion": text, "kind": kind, "task": task, "class": cls, "op": op, "limit": limit,
            "estimate": estimate, "low": low, "high": high, "result": result, "reason": reason}


UNDIFF = "fraction differentiation=undifferentiated >= 0.90"
FLAT = "fraction morphology=flattened <= 0.10"


def well(name, lot, verdict, undiff, flat, images, reasons=()):
    crits = [criterion(UNDIFF, "fraction", *undiff, task="differentiation", cls="undifferentiated"),
             criterion(FLAT, "fraction", *flat, task="morphology", cls="flattened"),
             criterion("flagged <= 0.05", "flagged", "PASS", 0.01), criterion("tiles >= 500", "tiles", "PASS", 812)]
    return {"name": name, "level": "well", "verdict": verdict, "reasons": list(reasons), "criteria": crits,
            "counts": {"tiles": 900, "background": 80, "evaluated": 820, "usable": 800, "flagged": 8,
                       "abstained": 30, "errors": 0},
            "fractions": {"differentiation": {"undifferentiated": {
                "estimate": undiff[1], "low": undiff[2], "high": undiff[3], "naive": undiff[1] - 0.03,
                "raw_mean": undiff[1], "n": 800, "n_effective": 211.4, "design_effect": 3.78, "method": "PACC"}}},
            "lot": lot, "images": images}


def make_doc():
    wells = [well("A1", "L1", "PASS", ("PASS", 0.96, 0.93, 0.98), ("PASS", 0.03, 0.01, 0.05), ["p/A1.tif"]),
             well("A2", "L1", "FAIL", ("FAIL", 0.71, 0.64, 0.78), ("FAIL", 0.24, 0.18, 0.31), ["p/A2.tif"],
                  ["fraction differentiation=undifferentiated: the whole interval is below 0.90"]),
             well("B1", "L2", "REVIEW", ("REVIEW", 0.91, 0.86, 0.95), ("PASS", 0.04, 0.02, 0.07),
                  [f"p/{HOSTILE}"], ["interval straddles the limit"])]
    lots = [{"name": "L1", "level": "lot", "verdict": "FAIL", "reasons": ["well A2 FAIL"], "wells": ["A1", "A2"],
             "criteria": [criterion(UNDIFF, "fraction", "FAIL", 0.83, 0.78, 0.87, "differentiation",
                                    "undifferentiated")],
             "counts": {"tiles": 1800, "usable": 1600}, "fractions": {}},
            {"name": "L2", "level": "lot", "verdict": "REVIEW", "reasons": ["well B1 REVIEW"], "wells": ["B1"],
             "criteria": [], "counts": {}, "fractions": {}}]
    images = [{"path": p, "well": w["name"], "lot": w["lot"], "status": "ok" if w["name"] != "B1" else "review",
               "reason": "" if w["name"] != "B1" else "pixel size unknown", "overlay": f"overlays/{Path(p).name}.png",
               "tiles": 900, "background": 80, "usable": 800, "flagged": 8, "abstained": 30, "errors": 0}
              for w in wells for p in w["images"]]
    return {"schema": "mscvision.qc/1", "created": "2025-01-01T00:00:00+00:00",
            "recommendation_only": "a recommendation: the quality unit decides release",
            "spec": {"path": "configs/qc/msc.yaml", "sha256": "a" * 64, "name": "MSC identity"},
            "model": {"path": "models/m.onnx", "sha256": "b" * 64, "name": "msc-convnext"},
            "unit": "tiles", "confidence": 0.95, "lots": lots, "wells": wells, "images": images, "audit": None,
            "exit_code": 4}


class TagCollector(HTMLParser):
    """Every start tag with its attributes, and whether the non-void tags close in order."""

    VOID = {"meta", "img", "br", "hr", "input", "link", "circle", "line", "rect", "polyline", "path"}

    def __init__(self):
        super().__init__()
        self.tags, self.stack, self.mismatched = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack.pop() != tag:
            self.mismatched.append(tag)


def parse(text: str) -> TagCollector:
    p = TagCollector()
    p.feed(text)
    p.close()
    return p


def test_summary_shows_every_verdict_and_criterion(tmp_path):
    doc = make_doc()
    overlays = {img["path"]: img["overlay"] for img in doc["images"]}
    out = render_summary(doc, tmp_path / "summary.html", overlays)
    assert out == tmp_path / "summary.html"
    text = out.read_text(encoding="utf-8")
    for word in ("PASS", "FAIL", "REVIEW"):
        assert f"'>{word}</span>" in text  # as a word in a badge, not colour alone
    for lot in doc["lots"]:
        assert f"Lot {lot['name']}: <span class='word'>{lot['verdict']}</span>" in text
    for w in doc["wells"]:
        for c in w["criteria"]:
            assert esc(c["criterion"]) in text
    assert "0.640" in text and "0.780" in text and "≥ 0.900" in text and "≤ 0.100" in text  # interval, limits
    assert "the release decision belongs to the quality unit" in text
    assert "a" * 64 in text and "b" * 64 in text and "MSC identity" in text and "msc-convnext" in text
    assert "not recorded in an audit trail" in text
    assert "naive 0.930" in text and "effective 211" in text  # the bias comparison and the clustering
    tags = parse(text)
    assert not tags.mismatched and not tags.stack
    charts = [a for t, a in tags.tags if t == "svg"]
    assert len(charts) == sum(c["kind"] == "fraction" for w in doc["wells"] for c in w["criteria"])
    assert "<script" not in text.lower()


def test_summary_escapes_a_hostile_file_name_and_links_the_overlays(tmp_path):
    doc = make_doc()
    overlays = {img["path"]: img["overlay"] for img in doc["images"]}
    text = render_summary(doc, tmp_path / "s.html", overlays).read_text(encoding="utf-8")
    assert HOSTILE not in text and "onerror=alert(1)>" not in text
    assert esc(HOSTILE) in text
    tags = parse(text).tags
    images = [a for t, a in tags if t == "img"]
    assert len(images) == len(doc["images"])
    assert not any("onerror" in a for a in images)  # the file name never became markup
    links = {a["href"] for t, a in tags if t == "a" and not a.get("href", "#").startswith("#")}
    assert {a["src"] for a in images} == links
    assert "overlays/A1.tif.png" in links and "overlays/A2.tif.png" in links
    hostile = next(link for link in links if "onerror" in link)
    assert hostile == "overlays/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.tif.png"  # a file name, quoted
    anchors = {a["href"] for t, a in tags if t == "a" and a.get("href", "").startswith("#")}
    ids = {a["id"] for t, a in tags if a.get("id")}
    assert anchors and anchors <= {f"#{i}" for i in ids}  # each well's images link to their rows


def test_summary_overlays_argument_wins_and_missing_ones_say_so(tmp_path):
    doc = make_doc()
    doc["images"][1]["overlay"] = ""
    overlays = {doc["images"][0]["path"]: "elsewhere/first.png"}
    text = render_summary(doc, tmp_path / "s.html", overlays).read_text(encoding="utf-8")
    assert "src='elsewhere/first.png'" in text and "overlays/A1.tif.png" not in text
    assert "(image not shown)" in text


def test_summary_audit_recorded_and_well_escaping(tmp_path):
    doc = copy.deepcopy(make_doc())
    doc["audit"] = {"log": "audit/qc.jsonl", "record": 17}
    doc["wells"][0]["name"] = "<b>A1</b>"
    doc["lots"][0]["reasons"] = ["<script>alert(1)</script>"]
    text = render_summary(doc, tmp_path / "s.html", {}).read_text(encoding="utf-8")
    assert "recorded: log audit/qc.jsonl, record 17" in text and "not recorded in an audit trail" not in text
    assert "<b>A1</b>" not in text and "&lt;b&gt;A1&lt;/b&gt;" in text
    assert "<script>" not in text


def test_fraction_chart_colours_the_interval_by_its_result():
    passing = criterion(UNDIFF, "fraction", "PASS", 0.96, 0.93, 0.98, "differentiation", "undifferentiated")
    failing = criterion(UNDIFF, "fraction", "FAIL", 0.71, 0.64, 0.78, "differentiation", "undifferentiated")
    assert f"stroke='{GREEN}' stroke-width='7'" in fraction_chart(passing)
    assert f"stroke='{RED}' stroke-width='7'" in fraction_chart(failing)
    empty = criterion(UNDIFF, "fraction", "REVIEW", None, None, None, "differentiation", "undifferentiated")
    assert "no estimate" in fraction_chart(empty)


def test_long_title_and_captions_wrap_inside_a_narrow_picture():
    scan = make_scan(thumbnail=False)
    scan.error = "truncated TIFF: " + "strip offsets beyond the end of the file " * 3
    scan.path = "plate/" + "a_very_long_file_name_without_spaces" * 3 + ".tif"
    layout = overlay_layout(scan, TASKS)
    small, big = qc_report._font(12), qc_report._font(14)
    text_width = layout.size[0] - 2 * qc_report.MARGIN
    assert sum(style == "alert" for _, style in layout.title) > 1  # wrapped, not cut off
    assert sum(style == "head" for _, style in layout.title) > 1  # the spaceless name is split
    for line, style in layout.title:
        assert (big if style == "head" else small).getlength(line) <= text_width
    assert any(len(c) > 1 for c in layout.captions)
    for caption in layout.captions:
        assert all(small.getlength(line) <= layout.panel_size[0] for line in caption)
    for (x, y), caption in zip(layout.panel_origins, layout.captions):
        assert y - len(caption) * qc_report.LINE_H >= qc_report.MARGIN + len(layout.title) * qc_report.LINE_H
