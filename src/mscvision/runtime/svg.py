"""Small inline-SVG figures for the evaluation report: line/marker/bar charts on unit-like axes and
heat maps. Our own ~150 lines instead of matplotlib, so that the bare station install (numpy,
Pillow, tifffile, onnxruntime) draws every figure of ``report.html``: plotting needs no extra.

Every text that reaches the SVG goes through ``html.escape`` (class names and group names come
from the user's manifest).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np

BLUE, ORANGE, RED, GREEN, GREY = "#1f6fb4", "#e8790c", "#c62828", "#2e7d32", "#9e9e9e"
FONT = "font-family='sans-serif' font-size='11'"


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


@dataclass
class Axes:
    """A chart with data coordinates ``x`` and ``y`` (low, high); elements are added, then ``svg()``."""

    x: tuple[float, float] = (0.0, 1.0)
    y: tuple[float, float] = (0.0, 1.0)
    width: int = 440
    height: int = 330
    title: str = ""
    x_label: str = ""
    y_label: str = ""
    margin: tuple[int, int, int, int] = (28, 16, 44, 52)  # top, right, bottom, left (px)
    y_ticks: bool = True  # False: a strip with no y scale (e.g. one interval against a limit)
    _body: list[str] = field(default_factory=list)
    _legend: list[tuple[str, str, bool]] = field(default_factory=list)  # label, colour, dashed

    def px(self, x: float, y: float) -> tuple[float, float]:
        top, right, bottom, left = self.margin
        fx = (x - self.x[0]) / ((self.x[1] - self.x[0]) or 1)
        fy = (y - self.y[0]) / ((self.y[1] - self.y[0]) or 1)
        return (left + fx * (self.width - left - right), self.height - bottom - fy * (self.height - top - bottom))

    def line(self, xs, ys, colour: str = BLUE, label: str = "", dashed: bool = False, markers: bool = False,
             width: float = 2.0) -> None:
        points = [self.px(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
        if not points:
            return
        dash = " stroke-dasharray='5 4'" if dashed else ""
        self._body.append(f"<polyline fill='none' stroke='{colour}' stroke-width='{width}'{dash} points='"
                          + " ".join(f"{a:.1f},{b:.1f}" for a, b in points) + "'/>")
        if markers:
            self._body += [f"<circle cx='{a:.1f}' cy='{b:.1f}' r='3' fill='{colour}'/>" for a, b in points]
        if label:
            self._legend.append((label, colour, dashed))

    def bars(self, lefts, rights, heights, colour: str = BLUE, label: str = "", opacity: float = 0.75) -> None:
        for lo, hi, h in zip(lefts, rights, heights):
            if h is None:
                continue
            (x0, y0), (x1, y1) = self.px(lo, h), self.px(hi, self.y[0])
            self._body.append(f"<rect x='{x0 + 1:.1f}' y='{y0:.1f}' width='{max(x1 - x0 - 2, 0.5):.1f}' "
                              f"height='{max(y1 - y0, 0):.1f}' fill='{colour}' fill-opacity='{opacity}'/>")
        if label:
            self._legend.append((label, colour, False))

    def point(self, x: float, y: float, colour: str = RED, label: str = "", radius: float = 5) -> None:
        a, b = self.px(x, y)
        self._body.append(f"<circle cx='{a:.1f}' cy='{b:.1f}' r='{radius}' fill='{colour}' stroke='white'/>")
        if label:
            self._legend.append((label, colour, False))

    def vline(self, x: float, colour: str = RED, label: str = "", dashed: bool = True) -> None:
        self.line([x, x], [self.y[0], self.y[1]], colour, label, dashed, width=1.5)

    def hline(self, y: float, colour: str = GREY, label: str = "", dashed: bool = True) -> None:
        self.line([self.x[0], self.x[1]], [y, y], colour, label, dashed, width=1.5)

    def svg(self) -> str:
        """The chart; the legend sits below the axes, where it can never hide a curve."""
        top, right, bottom, left = self.margin
        legend_h = 15 * len(self._legend) + (6 if self._legend else 0)
        total_h = self.height + legend_h
        parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{self.width}' height='{total_h}' "
                 f"viewBox='0 0 {self.width} {total_h}' role='img' aria-label='{esc(self.title)}'>",
                 "<rect width='100%' height='100%' fill='white'/>"]
        for fx in nice_ticks(*self.x):
            gx = self.px(fx, self.y[0])[0]
            parts += [f"<line x1='{gx:.1f}' y1='{top}' x2='{gx:.1f}' y2='{self.height - bottom}' stroke='#eee'/>",
                      f"<text x='{gx:.1f}' y='{self.height - bottom + 14}' text-anchor='middle' {FONT}>{fx:g}</text>"]
        for fy in nice_ticks(*self.y) if self.y_ticks else []:
            gy = self.px(self.x[0], fy)[1]
            parts += [f"<line x1='{left}' y1='{gy:.1f}' x2='{self.width - right}' y2='{gy:.1f}' stroke='#eee'/>",
                      f"<text x='{left - 5}' y='{gy + 4:.1f}' text-anchor='end' {FONT}>{fy:g}</text>"]
        parts.append(f"<rect x='{left}' y='{top}' width='{self.width - left - right}' "
                     f"height='{self.height - top - bottom}' fill='none' stroke='#555'/>")
        parts += self._body
        parts += [f"<text x='{self.width / 2:.0f}' y='16' text-anchor='middle' font-family='sans-serif' "
                  f"font-size='13' font-weight='bold'>{esc(self.title)}</text>",
                  f"<text x='{(left + self.width - right) / 2:.0f}' y='{self.height - 10}' text-anchor='middle' "
                  f"{FONT}>{esc(self.x_label)}</text>",
                  f"<text x='12' y='{(top + self.height - bottom) / 2:.0f}' text-anchor='middle' {FONT} "
                  f"transform='rotate(-90 12 {(top + self.height - bottom) / 2:.0f})'>{esc(self.y_label)}</text>"]
        for k, (label, colour, dashed) in enumerate(self._legend):
            y = self.height + 4 + 15 * k
            dash = " stroke-dasharray='5 4'" if dashed else ""
            parts += [f"<line x1='{left}' y1='{y - 4}' x2='{left + 20}' y2='{y - 4}' stroke='{colour}' "
                      f"stroke-width='3'{dash}/>",
                      f"<text x='{left + 25}' y='{y}' {FONT}>{esc(label)}</text>"]
        parts.append("</svg>")
        return "".join(parts)


def nice_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) within [low, high]."""
    span = (high - low) or 1.0
    power = 10.0 ** np.floor(np.log10(span / most))
    step = next(power * m for m in (1, 2, 2.5, 5, 10) if span / (power * m) <= most)
    first = np.ceil(low / step - 1e-9) * step
    return [round(float(v), 10) + 0.0 for v in np.arange(first, high + step * 1e-6, step)]  # + 0.0: no "-0"


def heatmap(values: list[list[float]], texts: list[list[str]], rows: list[str], columns: list[str], title: str,
            x_label: str = "predicted", y_label: str = "true", cell: int = 0) -> str:
    """A matrix of cells shaded by ``values`` (0..1, white to blue) with ``texts`` written in them."""
    n_rows, n_cols = len(rows), len(columns)
    cell = cell or max(28, min(64, 420 // max(n_cols, 1)))
    label_w = 8 + 7 * max((len(str(r)) for r in rows), default=4)
    label_h = 8 + 6 * max((len(str(c)) for c in columns), default=4)
    left, top = label_w + 20, 30
    width = max(left + n_cols * cell + 10, 20 + 7 * len(title))  # the title must fit
    height = top + n_rows * cell + label_h + 20
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' role='img' aria-label='{esc(title)}'>",
             "<rect width='100%' height='100%' fill='white'/>",
             f"<text x='{width / 2:.0f}' y='16' text-anchor='middle' font-family='sans-serif' font-size='13' "
             f"font-weight='bold'>{esc(title)}</text>"]
    for i in range(n_rows):
        for j in range(n_cols):
            v = min(max(float(values[i][j]), 0.0), 1.0)
            shade = f"rgb({int(255 - 224 * v)},{int(255 - 144 * v)},{int(255 - 75 * v)})"
            colour = "white" if v > 0.55 else "black"
            x, y = left + j * cell, top + i * cell
            parts += [f"<rect x='{x}' y='{y}' width='{cell}' height='{cell}' fill='{shade}' stroke='#ccc'/>",
                      f"<text x='{x + cell / 2:.0f}' y='{y + cell / 2 + 4:.0f}' text-anchor='middle' {FONT} "
                      f"fill='{colour}'>{esc(texts[i][j])}</text>"]
        parts.append(f"<text x='{left - 4}' y='{top + i * cell + cell / 2 + 4:.0f}' text-anchor='end' {FONT}>"
                     f"{esc(rows[i])}</text>")
    for j, name in enumerate(columns):
        x, y = left + j * cell + cell / 2, top + n_rows * cell + 6
        parts.append(f"<text x='{x:.0f}' y='{y}' text-anchor='end' {FONT} transform='rotate(-45 {x:.0f} {y})'>"
                     f"{esc(name)}</text>")
    parts += [f"<text x='{left + n_cols * cell / 2:.0f}' y='{height - 4}' text-anchor='middle' {FONT}>"
              f"{esc(x_label)}</text>",
              f"<text x='10' y='{top + n_rows * cell / 2:.0f}' text-anchor='middle' {FONT} "
              f"transform='rotate(-90 10 {top + n_rows * cell / 2:.0f})'>{esc(y_label)}</text>", "</svg>"]
    return "".join(parts)
