"""What ``mscvision qc`` shows a person: a tile overlay PNG per image and a one-page HTML summary.

The overlay (``render_overlay``) is the field's grey thumbnail with one panel per task side by side:
each tile is filled translucently in its class colour (Okabe–Ito, a palette that stays apart under the
common colour-vision deficiencies, so no class is told from another by red/green alone), abstained
tiles are hatched and outlined in grey, tiles the OOD gate flagged carry a red cross, error tiles are
black, background tiles are left clear. A legend strip and a title line with the counts per status
are drawn with Pillow's own font, so the bare station install (numpy, Pillow) draws it: no matplotlib.

The summary (``render_summary``) is rendered from the verdicts.json document only (schema
``mscvision.qc/1``, docs in design/QC_DESIGN.md), so what a person reads is exactly what was recorded.
It reuses the evaluation report's CSS and helpers (``runtime/report.py``) and its inline-SVG charts
(``runtime/svg.py``); it is one self-contained file (inline CSS, overlays linked relatively, the
files beside it) and every string from the data goes through ``html.escape``: file names, wells and
lots are user input.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Sequence
from urllib.parse import quote

import numpy as np

from mscvision.core.fileio import atomic_path, write_text_atomic
from mscvision.runtime.report import CSS, facts_table, image_tag, number
from mscvision.runtime.svg import GREEN, ORANGE, RED, Axes, esc

# --- the overlay PNG ---------------------------------------------------------------------------------

# Okabe & Ito (2008) without black (error tiles) and vermillion (too near the red flag cross).
PALETTE = ((86, 180, 233), (230, 159, 0), (0, 158, 115), (204, 121, 167), (0, 114, 178), (240, 228, 66))
FILL_ALPHA = 115           # of 255: the tissue stays visible under a class colour
ABSTAINED_GREY = (96, 96, 96)
ERROR_BLACK = (0, 0, 0)
FLAG_RED = (255, 0, 0)
MARGIN, GAP = 10, 14       # px around the picture, between panels
MIN_PANEL_SIDE = 200       # px: a small field is enlarged (nearest neighbour) so its tiles can be seen
MAX_THUMBNAIL_SIDE = 1024  # px: the side a missing thumbnail is drawn at, at most (the contract's limit)
LINE_H, SWATCH = 18, 14    # px: one text line; a legend swatch


@dataclass(frozen=True)
class OverlayLayout:
    """Where things sit in an overlay PNG (``overlay_layout``): the drawing and its tests share it."""

    size: tuple[int, int]                  # (width, height) of the PNG
    panel_size: tuple[int, int]            # (width, height) of one panel (the enlarged thumbnail)
    panel_origins: list[tuple[int, int]]   # (x, y) of each panel's top-left corner, one per task
    scale: float                           # panel px per source px
    title: list[tuple[str, str]]           # wrapped title lines and their style: "head", "body" or "alert"
    captions: list[list[str]]              # each panel's caption, wrapped to the panel's width
    legend: list[tuple[str, str, object]]  # (kind, label, colour) per legend item, in order
    legend_top: int


def render_overlay(scan, tasks: list[tuple[str, list[str]]], out_png: Path) -> Path:
    """Draw ``scan``'s tiles (a ``runtime.tiles.FieldScan``) over its thumbnail, one panel per task
    ``(name, classes)``, and write the PNG atomically to ``out_png``. Returns ``out_png``.

    Only the contract's attributes are read (path, height, width, tile_px, error, doubts, tiles,
    thumbnail, scale; per tile box, status, flagged, abstained, labels), so a scan of an image that
    could not be read (no thumbnail, perhaps no tiles) still gets a picture saying so, on white.
    """
    from PIL import Image, ImageDraw

    layout = overlay_layout(scan, tasks)
    base = _panel_base(scan, layout)
    canvas = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(12)
    for k, (line, style) in enumerate(layout.title):
        _text(draw, (MARGIN, MARGIN + k * LINE_H), line, font if style == "head" else small,
              (150, 0, 0) if style == "alert" else (20, 20, 20), layout.size[0] - 2 * MARGIN)
    panels = tasks or [("tiles", [])]
    colours = task_colours(panels)
    for (name, classes), origin, caption in zip(panels, layout.panel_origins, layout.captions):
        for k, line in enumerate(caption):
            _text(draw, (origin[0], origin[1] - (len(caption) - k) * LINE_H), line, small, (20, 20, 20),
                  layout.panel_size[0])
        canvas.paste(draw_panel(base, scan, name, classes, layout.scale, colours[name]), origin)
    _draw_legend(draw, layout, small)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        canvas.save(tmp, format="PNG")
    return out_png


def overlay_layout(scan, tasks: list[tuple[str, list[str]]]) -> OverlayLayout:
    """The PNG's geometry: title lines, panels side by side below them, the legend strip at the bottom."""
    (pw, ph), scale = _panel_geometry(scan)
    n = max(len(tasks), 1)
    width = max(2 * MARGIN + n * pw + (n - 1) * GAP, 520)
    font, small = _font(14), _font(12)
    title = []
    for k, line in enumerate(title_lines(scan)):
        style = "head" if k == 0 else "alert" if line.startswith(("error:", "doubt:")) else "body"
        title += [(part, style) for part in _wrap(line, font if k == 0 else small, width - 2 * MARGIN)]
    panels = tasks or [("tiles", [])]
    captions = [_wrap(panel_caption(scan, name, classes), small, pw) for name, classes in panels]
    caption_h = max(len(c) for c in captions) * LINE_H
    top = MARGIN + len(title) * LINE_H + 6 + caption_h  # captions sit just above their panels
    origins = [(MARGIN + k * (pw + GAP), top) for k in range(n)]
    legend = legend_items(tasks)
    legend_top = top + ph + 10
    rows = len(_flow(legend, width - 2 * MARGIN, small))
    height = legend_top + rows * (SWATCH + 8) + MARGIN
    return OverlayLayout((width, height), (pw, ph), origins, scale, title, captions, legend, legend_top)


def tile_mark(tile, task: str, classes: Sequence[str]) -> str:
    """What a tile shows in ``task``'s panel: "background", "error", "flagged", "abstained" or its class.

    Flagged beats abstained (the OOD gate speaks for the whole tile); a tile whose label for this task
    is not one of the classes ("review", missing) is drawn as abstained: it carries no call here.
    """
    if tile.status == "background":
        return "background"
    if tile.status == "error":
        return "error"
    if tile.flagged:
        return "flagged"
    label = (tile.labels or {}).get(task)
    if (tile.abstained or {}).get(task) or label not in classes:
        return "abstained"
    return label


def task_colours(tasks: list[tuple[str, list[str]]]) -> dict[str, dict[str, tuple[int, int, int]]]:
    """Task → class → palette colour, numbered across the tasks, so that no two classes of the picture share
    a colour while the palette lasts (six classes; more repeat it)."""
    out, k = {}, 0
    for name, classes in tasks:
        out[name] = {c: PALETTE[(k + i) % len(PALETTE)] for i, c in enumerate(classes)}
        k += len(classes)
    return out


def draw_panel(base, scan, task: str, classes: Sequence[str], scale: float,
               colours: dict[str, tuple[int, int, int]]):
    """One task's panel: ``base`` (the enlarged grey thumbnail, RGB) with every tile's mark over it, each
    class in ``colours[class]`` (``task_colours``)."""
    from PIL import Image, ImageDraw

    w, h = base.size
    marks = [(tile_mark(t, task, classes), _box(t.box, scale, w, h)) for t in scan.tiles]
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for mark, box in marks:  # class fills first: every other mark is drawn over them
        if box and mark not in ("background", "error", "flagged", "abstained"):
            draw.rectangle(box, fill=(*colours[mark], FILL_ALPHA))
    hatch = np.zeros((h, w), bool)
    for mark, box in marks:
        if box and mark == "abstained":
            hatch[box[1]:box[3] + 1, box[0]:box[2] + 1] = True
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = hatch & ((xx + yy) % 6 < 2)  # diagonal hatching: readable without colour
    pixels = np.array(layer)
    pixels[stripes] = (*ABSTAINED_GREY, 255)
    layer = Image.fromarray(pixels, "RGBA")
    draw = ImageDraw.Draw(layer)
    for mark, box in marks:
        if not box:
            continue
        if mark == "abstained":
            draw.rectangle(box, outline=(*ABSTAINED_GREY, 255), width=1)
        elif mark == "error":  # a white rim tells it from a dark (fluorescence) background
            draw.rectangle(box, fill=(*ERROR_BLACK, 255), outline=(255, 255, 255, 255), width=1)
    for mark, box in marks:  # last, so that a neighbour's fill never hides a cross
        if box and mark == "flagged":
            _cross(draw, box)
    return Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")


def title_lines(scan) -> list[str]:
    """File name; tiles counted per status; the image's error and doubts (a reason no verdict rests on it)."""
    counts = {s: 0 for s in ("ok", "review", "error", "background")}
    for t in scan.tiles:
        counts[t.status] = counts.get(t.status, 0) + 1
    flagged = sum(1 for t in scan.tiles if t.flagged)
    size = f"{scan.width} x {scan.height} px" if scan.width and scan.height else "size unknown"
    lines = [PurePath(str(scan.path)).name or str(scan.path),
             f"{len(scan.tiles)} tiles of {scan.tile_px} px ({size}): "
             + " · ".join(f"{s} {n}" + (f" ({flagged} flagged by the OOD gate)" if s == "review" else "")
                          for s, n in counts.items())]
    if scan.error:
        lines.append(f"error: {scan.error}")
    lines += [f"doubt: {d}" for d in scan.doubts]
    return lines


def panel_caption(scan, task: str, classes: Sequence[str]) -> str:
    """The task and how many tiles show each class, so a reader need not count colours."""
    marks = [tile_mark(t, task, classes) for t in scan.tiles]
    parts = [f"{c} {marks.count(c)}" for c in classes] + [f"abstained {marks.count('abstained')}"]
    return f"{task}: " + " · ".join(parts)


def legend_items(tasks: list[tuple[str, list[str]]]) -> list[tuple[str, str, object]]:
    """A row per task (its classes' colours), then a row of the marks every panel shares."""
    items: list[tuple[str, str, object]] = []
    for name, colours in task_colours(tasks).items():
        items.append(("label", f"{name}:", None))
        items += [("class", c, colour) for c, colour in colours.items()]
    items += [("label", "every panel:", None), ("abstained", "abstained (no call)", ABSTAINED_GREY),
              ("flagged", "flagged by the OOD gate", FLAG_RED), ("error", "error", ERROR_BLACK),
              ("background", "background: left clear, not evaluated", None)]
    return items


def _panel_geometry(scan) -> tuple[tuple[int, int], float]:
    """(panel width, height) and panel px per source px: the thumbnail's, enlarged if it is tiny."""
    if scan.thumbnail is not None:
        th, tw = np.asarray(scan.thumbnail).shape[:2]
        scale = float(scan.scale)
    else:  # no thumbnail (unreadable image): the tile grid on white, at the contract's thumbnail size
        h = max([scan.height or 0, *(t.box.y1 for t in scan.tiles)])
        w = max([scan.width or 0, *(t.box.x1 for t in scan.tiles)])
        if not h or not w:
            return (MIN_PANEL_SIDE, MIN_PANEL_SIDE), 0.0
        scale = float(scan.scale) if scan.scale and max(h, w) * scan.scale <= MAX_THUMBNAIL_SIDE else \
            min(1.0, MAX_THUMBNAIL_SIDE / max(h, w))
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    zoom = max(1, math.ceil(MIN_PANEL_SIDE / max(th, tw, 1)))
    return (tw * zoom, th * zoom), scale * zoom


def _panel_base(scan, layout: OverlayLayout):
    from PIL import Image

    if scan.thumbnail is None:
        return Image.new("RGB", layout.panel_size, "white")
    grey = Image.fromarray(np.asarray(scan.thumbnail, dtype=np.uint8))
    return grey.resize(layout.panel_size, Image.NEAREST).convert("RGB")


def _box(box, scale: float, w: int, h: int) -> tuple[int, int, int, int] | None:
    """A source-pixel TileBox (end exclusive) → inclusive panel pixels, at least one pixel; None if off the panel."""
    x0, y0 = round(box.x0 * scale), round(box.y0 * scale)
    x1, y1 = max(round(box.x1 * scale) - 1, x0), max(round(box.y1 * scale) - 1, y0)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    return (x0, y0, x1, y1) if x0 <= x1 and y0 <= y1 else None


def _cross(draw, box: tuple[int, int, int, int]) -> None:
    """A red X corner to corner, on a white halo so it shows over any class colour and over black."""
    x0, y0, x1, y1 = box
    width = max(1, round(min(x1 - x0, y1 - y0) / 10))
    for colour, w in (((255, 255, 255, 255), width + 2), ((*FLAG_RED, 255), width)):
        draw.line((x0, y0, x1, y1), fill=colour, width=w)
        draw.line((x0, y1, x1, y0), fill=colour, width=w)


def _draw_legend(draw, layout: OverlayLayout, font) -> None:
    for row_index, row in enumerate(_flow(layout.legend, layout.size[0] - 2 * MARGIN, font)):
        y = layout.legend_top + row_index * (SWATCH + 8)
        for x, (kind, label, colour) in row:
            x = MARGIN + x
            if kind != "label":
                _swatch(draw, (x, y, x + SWATCH - 1, y + SWATCH - 1), kind, colour)
                x += SWATCH + 4
            _text(draw, (x, y), label, font, (20, 20, 20))


def _swatch(draw, box, kind: str, colour) -> None:
    x0, y0, x1, y1 = box
    if kind == "class":  # as the tile looks: the translucent fill over mid-grey tissue
        mix = tuple(round((c * FILL_ALPHA + 150 * (255 - FILL_ALPHA)) / 255) for c in colour)
        draw.rectangle(box, fill=mix, outline=(90, 90, 90))
    elif kind == "abstained":
        draw.rectangle(box, fill=(235, 235, 235))
        for d in range(-SWATCH, SWATCH, 6):
            draw.line((x0 + max(d, 0), y0 + max(-d, 0), x0 + min(d + SWATCH, SWATCH) - 1,
                       y0 + min(SWATCH - d, SWATCH) - 1), fill=ABSTAINED_GREY, width=2)
        draw.rectangle(box, outline=ABSTAINED_GREY)
    elif kind == "flagged":
        draw.rectangle(box, fill=(235, 235, 235))
        draw.line((x0, y0, x1, y1), fill=FLAG_RED, width=2)
        draw.line((x0, y1, x1, y0), fill=FLAG_RED, width=2)
    elif kind == "error":
        draw.rectangle(box, fill=ERROR_BLACK, outline=(90, 90, 90))
        draw.rectangle((x0 + 1, y0 + 1, x1 - 1, y1 - 1), outline=(255, 255, 255))
    else:  # background: left clear
        draw.rectangle(box, fill=(255, 255, 255), outline=(90, 90, 90))


def _flow(items, width: int, font) -> list[list[tuple[int, tuple]]]:
    """Legend items placed left to right, wrapped into rows of ``width`` px: [[(x, item), ...], ...]."""
    rows, row, x = [], [], 0
    for item in items:
        w = (0 if item[0] == "label" else SWATCH + 4) + int(font.getlength(item[1])) + 14
        if row and (x + w > width or item[0] == "label"):  # a task's classes start a row of their own
            rows.append(row)
            row, x = [], 0
        row.append((x, item))
        x += w
    return rows + ([row] if row else [])


def _wrap(text: str, font, width: int, most: int = 3) -> list[str]:
    """``text`` broken at spaces into lines of at most ``width`` px (a longer word is cut), at most ``most``
    lines: the last one then ends in "..." (``_text`` cuts it)."""
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if line and font.getlength(candidate) > width:
            lines.append(line)
            candidate = word
        while font.getlength(candidate) > width and len(candidate) > 1:  # a file name with no spaces
            cut = max(k for k in range(1, len(candidate) + 1) if font.getlength(candidate[:k]) <= width or k == 1)
            lines.append(candidate[:cut])
            candidate = candidate[cut:]
        line = candidate
    lines.append(line)
    if len(lines) > most:
        lines = lines[:most - 1] + [" ".join(lines[most - 1:]) + "..."]
    return lines


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # older Pillow: its fixed bitmap font
        return ImageFont.load_default()


def _text(draw, xy, text: str, font, fill, max_width: int | None = None) -> None:
    """Text cut to ``max_width`` px (with "..."); characters the font cannot encode become "?"."""
    if max_width is not None and font.getlength(text) > max_width:
        while text and font.getlength(text + "...") > max_width:
            text = text[:-1]
        text += "..."
    try:
        draw.text(xy, text, font=font, fill=fill)
    except UnicodeEncodeError:  # the old bitmap font is Latin-1 only; a file name may be anything
        draw.text(xy, text.encode("latin-1", "replace").decode("latin-1"), font=font, fill=fill)


# --- the HTML summary ------------------------------------------------------------------------------

VERDICT_CLASS = {"PASS": "pass", "FAIL": "fail", "REVIEW": "review"}
RESULT_COLOUR = {"PASS": GREEN, "FAIL": RED, "REVIEW": ORANGE}
OPS = {">=": "≥", "<=": "≤", ">": ">", "<": "<"}
EXIT_MEANING = {0: "every lot PASS", 2: "refused: no verdict", 3: "input errors, nothing judged", 4: "a FAIL",
                5: "REVIEW (no FAIL)"}
COUNT_KEYS = ("usable", "background", "flagged", "abstained", "errors")
OVERLAY_WIDTH = 640  # px in the page; the link opens the PNG at full size
RECOMMENDATION = "This is a recommendation; the release decision belongs to the quality unit."


def render_summary(doc: dict, out_html: Path, overlays: dict[str, str]) -> Path:
    """Write the one-page summary of a verdicts.json document (``doc``) atomically to ``out_html``.

    ``overlays`` maps an image's path (as in ``doc["images"]``) to its overlay PNG, a file path
    relative to ``out_html``'s folder (it is URL-quoted here); an image missing from it falls back to
    the document's own ``overlay`` entry. Returns ``out_html``.
    """
    out_html = Path(out_html)
    write_text_atomic(out_html, summary_html(doc, overlays))
    return out_html


def summary_html(doc: dict, overlays: dict[str, str]) -> str:
    """The page as a string (``render_summary`` writes it)."""
    spec = doc.get("spec") or {}
    title = f"QC recommendation: {spec.get('name') or 'unnamed spec'}"
    exit_code = doc.get("exit_code")
    meta = (f"created {esc(doc.get('created') or 'unknown')} · schema {esc(doc.get('schema'))} · exit code "
            f"{esc(exit_code)} ({esc(EXIT_MEANING.get(exit_code, 'unknown'))}) · page written "
            f"{esc(dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'))}; the numbers are in verdicts.json.")
    image_ids = {img.get("path"): f"img-{k}" for k, img in enumerate(doc.get("images") or [])}
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}{EXTRA_CSS}</style></head><body><h1>{esc(title)}</h1><p class='meta'>{meta}</p>"
            f"<p class='recommendation'><b>{esc(RECOMMENDATION)}</b>"
            + (f" {esc(doc['recommendation_only'])}" if doc.get("recommendation_only") else "") + "</p>"
            + lots_block(doc.get("lots") or [])
            + f"<h2>What was judged</h2>{provenance_table(doc)}"
            + f"<h2>Wells</h2>{wells_block(doc.get('wells') or [], image_ids, doc.get('confidence'))}"
            + f"<h2>Images</h2>{images_block(doc.get('images') or [], overlays, image_ids)}"
            + HOW_TO_READ + "</body></html>")


def verdict_badge(verdict: object) -> str:
    """The verdict as a word in a coloured box: the word carries it, the colour only helps."""
    word = str(verdict)
    return f"<span class='verdict v-{VERDICT_CLASS.get(word, 'review')}'>{esc(word)}</span>"


def status_badge(status: object) -> str:
    """An image's status (ok / review / error) as a word; not a verdict, so not in a verdict's colours."""
    word = str(status)
    kind = word if word in ("ok", "review", "error") else "review"
    return f"<span class='status s-{kind}'>{esc(word)}</span>"


def lots_block(lots: list[dict]) -> str:
    if not lots:
        return "<div class='banner v-review'><b>No lot was judged.</b></div>"
    parts = []
    for lot in lots:
        kind = VERDICT_CLASS.get(str(lot.get("verdict")), "review")
        wells = ", ".join(str(w) for w in lot.get("wells") or [])
        reasons = "".join(f"<li>{esc(r)}</li>" for r in lot.get("reasons") or [])
        parts.append(f"<div class='banner v-{kind}'><div class='banner-head'>Lot {esc(lot.get('name'))}: "
                     f"<span class='word'>{esc(lot.get('verdict'))}</span> <span class='rec'>(recommendation)</span>"
                     f"</div><div>wells: {esc(wells or 'none')}{counts_text(lot.get('counts') or {})}</div>"
                     + (f"<ul>{reasons}</ul>" if reasons else "")
                     + criteria_table(lot.get("criteria") or [], "pooled over the lot's usable tiles") + "</div>")
    return "".join(parts)


def provenance_table(doc: dict) -> str:
    spec, model = doc.get("spec") or {}, doc.get("model") or {}
    unit = doc.get("unit")
    unit_text = (f"{unit}: a fraction is the share of usable tissue tiles (not background, not flagged by the OOD "
                 "gate, not errors) whose dominant state is the class" if unit == "tiles" else str(unit))
    confidence = doc.get("confidence")
    conf_text = (f"{float(confidence):.0%} two-sided intervals (clustered tiles: design-effect corrected)"
                 if isinstance(confidence, (int, float)) else str(confidence))
    audit = doc.get("audit")
    audit_text = ("not recorded in an audit trail" if audit is None else
                  "recorded: " + ", ".join(f"{k} {v}" for k, v in audit.items()) if isinstance(audit, dict)
                  else f"recorded: {audit}")
    return facts_table([("spec", f"{spec.get('name') or 'unnamed'} ({spec.get('path') or 'path not recorded'})"),
                        ("spec SHA-256", spec.get("sha256") or "not recorded"),
                        ("model", f"{model.get('name') or 'unnamed'} ({model.get('path') or 'path not recorded'})"),
                        ("model SHA-256", model.get("sha256") or "not recorded"),
                        ("unit", unit_text), ("confidence", conf_text), ("audit", audit_text)])


def wells_block(wells: list[dict], image_ids: dict, confidence: object) -> str:
    if not wells:
        return "<p>No well was judged.</p>"
    level = f"{float(confidence):.0%}" if isinstance(confidence, (int, float)) else "the stated"
    head = ("<table class='wells'><thead><tr><th>well</th><th>verdict and reasons</th><th>criterion</th>"
            f"<th>estimate</th><th>{esc(level)} interval</th><th>limit</th><th>result</th><th>tiles</th>"
            "<th>fractions against their limits</th></tr></thead>")
    return head + "".join(well_rows(w, image_ids) for w in wells) + "</table>"


def well_rows(well: dict, image_ids: dict) -> str:
    """One well as a ``<tbody>`` (kept together on a printed page): a row per criterion, the well's
    verdict, reasons, tile counts and chart spanning them."""
    criteria = well.get("criteria") or []
    span = max(len(criteria), 1)
    images = "".join(f"<li><a href='#{image_ids[p]}'>{esc(PurePath(str(p)).name)}</a></li>" if p in image_ids
                     else f"<li>{esc(PurePath(str(p)).name)}</li>" for p in well.get("images") or [])
    reasons = "".join(f"<li>{esc(r)}</li>" for r in well.get("reasons") or [])
    lead = (f"<td rowspan='{span}'><b>{esc(well.get('name'))}</b><br><span class='small'>lot "
            f"{esc(well.get('lot'))}</span>" + (f"<ul class='small'>{images}</ul>" if images else "") + "</td>"
            f"<td rowspan='{span}'>{verdict_badge(well.get('verdict'))}"
            + (f"<ul class='small'>{reasons}</ul>" if reasons else "") + "</td>")
    tail = (f"<td rowspan='{span}' class='small'>{counts_list(well.get('counts') or {})}</td>"
            f"<td rowspan='{span}'>{''.join(fraction_chart(c) for c in criteria if c.get('kind') == 'fraction')}"
            "</td>")
    fractions = well.get("fractions") or {}
    rows = [criterion_cells(c, fractions) for c in criteria] or ["<td colspan='5'>no criterion</td>"]
    return ("<tbody>" + "".join(f"<tr>{lead if k == 0 else ''}{row}{tail if k == 0 else ''}</tr>"
                                for k, row in enumerate(rows)) + "</tbody>")


def criteria_table(criteria: list[dict], caption: str) -> str:
    if not criteria:
        return ""
    rows = "".join(f"<tr>{criterion_cells(c, {})}</tr>" for c in criteria)
    return (f"<table class='criteria'><caption>{esc(caption)}</caption><tr><th>criterion</th><th>estimate</th>"
            f"<th>interval</th><th>limit</th><th>result</th></tr>{rows}</table>")


def criterion_cells(c: dict, fractions: dict) -> str:
    """criterion · estimate (with the naive count beside a fraction) · interval · limit · result and reason."""
    kind = c.get("kind")
    estimate = value_text(c.get("estimate"), kind)
    detail = (fractions.get(c.get("task")) or {}).get(c.get("class")) if kind == "fraction" else None
    if detail:
        estimate += (f"<br><span class='small'>naive {esc(value_text(detail.get('naive'), kind))}"
                     f"{', ' + esc(detail['method']) if detail.get('method') else ''}</span>")
    interval = ("–" if c.get("low") is None and c.get("high") is None else
                f"[{esc(value_text(c.get('low'), kind))}, {esc(value_text(c.get('high'), kind))}]")
    if detail and detail.get("n_effective") is not None:
        interval += (f"<br><span class='small'>n {esc(detail.get('n'))}, effective "
                     f"{esc(value_text(detail.get('n_effective'), 'count'))}</span>")
    limit = f"{esc(OPS.get(c.get('op'), c.get('op') or ''))} {esc(value_text(c.get('limit'), kind))}"
    reason = f"<br><span class='small'>{esc(c['reason'])}</span>" if c.get("reason") else ""
    return (f"<td>{esc(c.get('criterion'))}</td><td>{estimate}</td><td class='nowrap'>{interval}</td>"
            f"<td class='nowrap'>{limit}</td>"
            f"<td>{verdict_badge(c.get('result'))}{reason}</td>")


def value_text(value: object, kind: object) -> str:
    """A figure as text: tile and image counts as integers, fractions to three decimals."""
    if value is None:
        return "–"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if kind in ("tiles", "images", "count"):
        return f"{value:.0f}" if float(value).is_integer() or kind == "count" else f"{value:g}"
    return number(value)


def counts_list(counts: dict) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td class='num'>{esc(counts.get(k, '–'))}</td></tr>" for k in COUNT_KEYS)
    total = f"<tr><td>all tiles</td><td class='num'>{esc(counts.get('tiles', '–'))}</td></tr>"
    return f"<table class='counts'>{total}{rows}</table>"


def counts_text(counts: dict) -> str:
    """" · N tiles: a usable, b background, ..." for the counts the document has ("" for none)."""
    known = [f"{counts[k]} {k}" for k in COUNT_KEYS if k in counts]
    if not known and "tiles" not in counts:
        return ""
    return esc(f" · {counts.get('tiles', '?')} tiles" + (": " + ", ".join(known) if known else ""))


def fraction_chart(c: dict) -> str:
    """A fraction criterion's estimate (dot) and interval (bar, in the result's colour) against its limit
    (dashed line); the acceptable side of the limit is shaded green."""
    limit, low, high, estimate = (c.get(k) for k in ("limit", "low", "high", "estimate"))
    if not isinstance(limit, (int, float)):
        return ""
    values = [v for v in (limit, low, high, estimate) if isinstance(v, (int, float))]
    x_lo = max(0.0, math.floor((min(values) - 0.04) * 10) / 10)
    x_hi = min(1.0, math.ceil((max(values) + 0.04) * 10) / 10)
    label = f"{c.get('class') or c.get('criterion')} {OPS.get(c.get('op'), c.get('op') or '')} {limit:g}"
    ax = Axes(x=(x_lo, x_hi), y=(0.0, 1.0), width=230, height=82, margin=(20, 10, 24, 10), y_ticks=False,
              title=label if estimate is not None else f"{label}: no estimate")
    if c.get("op") in (">=", ">"):
        ax.bars([limit], [x_hi], [1.0], GREEN, opacity=0.12)
    elif c.get("op") in ("<=", "<"):
        ax.bars([x_lo], [limit], [1.0], GREEN, opacity=0.12)
    ax.vline(limit, "#333333")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        ax.line([low, high], [0.5, 0.5], RESULT_COLOUR.get(str(c.get("result")), ORANGE), width=7)
    if isinstance(estimate, (int, float)):
        ax.point(estimate, 0.5, "#222222", radius=4)
    return f"<div class='chart'>{ax.svg()}</div>"


def images_block(images: list[dict], overlays: dict[str, str], image_ids: dict) -> str:
    if not images:
        return "<p>No image.</p>"
    rows = []
    for img in images:
        path = img.get("path")
        href = overlay_href(overlays.get(path) or img.get("overlay"))
        name = PurePath(str(path)).name
        tag = image_tag(href, f"tile overlay of {name}", width=OVERLAY_WIDTH, height=None)
        picture = f"<a href='{esc(href)}'>{tag}</a>" if href else tag
        counts = ", ".join(f"{img.get(k, '–')} {k}" for k in ("tiles", *COUNT_KEYS))
        rows.append(f"<tr id='{image_ids.get(path, '')}'><td class='overlay'>{picture}</td><td><b>{esc(name)}</b>"
                    f"<br><span class='path'>{esc(path)}</span><br>well {esc(img.get('well'))} · lot "
                    f"{esc(img.get('lot'))}<br>{status_badge(img.get('status'))}"
                    + (f" {esc(img['reason'])}" if img.get("reason") else "")
                    + f"<br><span class='small'>{esc(counts)}</span></td></tr>")
    return ("<table class='images'><thead><tr><th>overlay (click for full size)</th><th>image, well, status</th></tr>"
            "</thead>" + "".join(rows) + "</table><p class='explain'>Overlay: one panel per task; a tile's "
            "translucent colour is its class, grey hatching marks a tile that abstained, a red cross one the OOD "
            "gate flagged, black an error; background tiles are left clear (see each PNG's legend).</p>")


def overlay_href(path: str | None) -> str | None:
    """A relative file path as a link: URL-quoted, so a '#', '?' or ':' in a file name stays part of the
    name (and a value like ``javascript:`` can only ever be a file name)."""
    if not path:
        return None
    return quote(PurePath(str(path)).as_posix(), safe="/")


HOW_TO_READ = (
    "<h2>How to read this page</h2><p class='explain'>Each criterion is judged on its interval, not on its "
    "estimate alone: a fraction criterion PASSes when the whole interval satisfies the limit, FAILs when the whole "
    "interval violates it, and goes to REVIEW when the interval straddles the limit. Too many flagged or abstained "
    "tiles, too little tissue, or an image that could not be read or whose pixel size is unknown send a well to "
    "REVIEW with the reason. A well PASSes only when every criterion PASSes; a lot is the worst of its wells "
    "together with its own pooled criteria. In the charts the dot is the estimate, the bar its interval in the "
    "colour of the result, the dashed line the limit and the green shading the acceptable side. The estimate "
    "corrects the model's own confusions (the naive count of labels is shown beside it); the interval allows for "
    "tiles of one image region being alike (effective n). "
    + esc(RECOMMENDATION) + "</p>")

EXTRA_CSS = """
body{max-width:1240px}
.recommendation{border-left:4px solid #555;padding:4px 10px;background:#f6f6f6}
.banner{border:2px solid;border-radius:4px;padding:8px 12px;margin:.6em 0}
.banner-head{font-size:1.35em;font-weight:bold}.banner .word{letter-spacing:.05em}
.rec{font-size:.7em;font-weight:normal}
.banner.v-pass{background:#e7f4ea;border-color:#2e7d32}.banner.v-fail{background:#fdecea;border-color:#c62828}
.banner.v-review{background:#fff4de;border-color:#b26a00}
.verdict{display:inline-block;padding:1px 6px;border-radius:3px;font-weight:bold;color:#fff;font-size:.9em}
.verdict.v-pass{background:#2e7d32}.verdict.v-fail{background:#c62828}.verdict.v-review{background:#a85f00}
table.criteria caption{text-align:left;font-size:.85em;color:#555}
table.wells tbody{border-top:3px solid #888}.small{font-size:.82em;color:#444}.small ul,ul.small{margin:.2em 0;
padding-left:1.1em}table.counts td{border:none;padding:0 4px}.num{text-align:right}
.status{font-weight:bold;padding:0 4px;border:1px solid}.s-ok{color:#2e5e2e}.s-review{color:#8a4b00}
.s-error{color:#fff;background:#333;border-color:#333}
td.overlay img{border:1px solid #999;max-width:100%;height:auto}td.nowrap{white-space:nowrap}
.chart svg{display:block;margin-bottom:2px}
@media print{body{max-width:none;margin:0}
.banner,.verdict{-webkit-print-color-adjust:exact;print-color-adjust:exact}
tbody,tr,.banner{break-inside:avoid}a{color:inherit;text-decoration:none}}
"""
