"""Cell shapes, each drawn into its own small bounding box.

A crop holds up to ~60 cells; drawing each into a local box costs a few thousand pixels per
cell instead of the whole frame, which is what makes 20+ images/s on one core possible.

Three body plans cover the morphology classes:
  * ``SpindleShape``  - fibroblast-like: long, tapering to thin processes, slightly bent;
  * ``PolygonShape``  - spread, flat, polygonal outline (senescent-like; smaller and more regular
                        when cuboidal, as osteogenic cells are);
  * ``RoundShape``    - small, thick, phase-bright (detached, dividing or dying).
Each ``render`` returns a ``Patch``: soft mask, optical thickness and nucleus in the box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EDGE = 0.8  # soft-edge width in px: anti-aliased outlines without supersampling


@dataclass
class Patch:
    """One rendered cell; arrays are in the box whose top-left canvas pixel is (y0, x0)."""

    y0: int
    x0: int
    mask: np.ndarray  # soft cell mask in [0, 1]
    thick: np.ndarray  # optical thickness of the cell body, 0 outside
    nucleus: np.ndarray  # soft nucleus mask
    nucleus_yx: tuple[float, float]  # nucleus centre, box coordinates
    nucleus_r: float  # mean nucleus radius, px
    angle: float  # long-axis angle, radians (fibres in fluorescence follow it)
    bright: bool = False  # phase-bright body (rounded cells)

    @property
    def area(self) -> float:
        return float(self.mask.sum())

    def shifted(self, dy: int, dx: int) -> "Patch":
        """The same cell moved by whole pixels: lets placement try positions without re-rendering."""
        return Patch(self.y0 + dy, self.x0 + dx, self.mask, self.thick, self.nucleus,
                     self.nucleus_yx, self.nucleus_r, self.angle, self.bright)


def _frame(half: int, cy: float, cx: float, angle: float):
    """Local grid rotated into the cell frame: u along the long axis, v across it."""
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    y -= cy
    x -= cx
    c, s = np.cos(angle), np.sin(angle)
    return x * c + y * s, -x * s + y * c


def _soft(distance_inside: np.ndarray) -> np.ndarray:
    return np.clip(distance_inside / EDGE + 0.5, 0.0, 1.0)


def _ellipse(u, v, u0, v0, a, b):
    """Soft ellipse mask; the distance estimate is exact enough for 1-px anti-aliasing."""
    rho = np.sqrt(((u - u0) / a) ** 2 + ((v - v0) / b) ** 2)
    return _soft((1.0 - rho) * min(a, b))


def _finish(half, sub, u, v, mask, thick, nuc_u, nuc_v, na, nb, angle, bright=False) -> Patch:
    nucleus = _ellipse(u, v, nuc_u, nuc_v, na, nb) * (mask > 0.5)
    c, s = np.cos(angle), np.sin(angle)
    ny = half + sub[0] + nuc_u * s + nuc_v * c
    nx = half + sub[1] + nuc_u * c - nuc_v * s
    return Patch(-half, -half, mask.astype(np.float32), thick.astype(np.float32),
                 nucleus.astype(np.float32), (float(ny), float(nx)), float(np.sqrt(na * nb)), angle, bright)


@dataclass
class SpindleShape:
    """Half-lengths l1/l2 to either tip, half-width w; width ~ (1 - s^2)^gamma tapers into processes."""

    l1: float
    l2: float
    w: float
    gamma: float
    bend: float
    wobble: tuple[float, float, float]  # amplitude, spatial frequency, phase of the outline ripple
    angle: float
    nucleus: tuple[float, float, float]  # offset along axis, half-length, half-width

    @classmethod
    def sample(cls, rng, scale: float, squat: float = 1.0) -> "SpindleShape":
        # squat < 1 shortens and widens the cell (cuboidal tendency of osteogenic cells)
        length = rng.uniform(30, 50) * scale * squat
        w = rng.uniform(4.0, 6.5) * scale / np.sqrt(squat)
        asym = rng.uniform(0.6, 1.0)
        na = rng.uniform(5.5, 8.0) * scale
        return cls(length, length * asym, w, rng.uniform(1.0, 2.2), rng.uniform(-0.25, 0.25),
                   (rng.uniform(0.0, 0.15), rng.uniform(0.1, 0.3), rng.uniform(0, 6.3)),
                   rng.uniform(0, np.pi), (rng.uniform(-0.15, 0.15) * length, na, min(0.7 * w, na / 1.6)))

    def render(self, sub: tuple[float, float]) -> Patch:
        half = int(max(self.l1, self.l2) + 3)
        u, v = _frame(half, sub[0], sub[1], self.angle)
        tip = np.where(u >= 0, self.l1, self.l2)
        s = np.clip(np.abs(u) / tip, 0.0, 1.0)
        v = v - self.bend * tip * s ** 2 * np.sign(self.bend + 1e-9)
        amp, freq, phase = self.wobble
        width = self.w * (1 - s ** 2) ** self.gamma * (1 + amp * np.sin(freq * u + phase))
        width = np.maximum(width, 0.7 * (s < 1))  # thin processes run on to the tips
        mask = _soft(width - np.abs(v))
        thick = mask * np.sqrt(np.clip(1 - (v / np.maximum(width, 0.5)) ** 2, 0, 1)) * (width / self.w)
        nu, na, nb = self.nucleus
        return _finish(half, sub, u, v, mask, thick, nu, 0.0, na, nb, self.angle)


@dataclass
class PolygonShape:
    """A spread cell: straight edges between vertices, bowed inwards (lamellipodia between anchors)."""

    angles: np.ndarray
    radii: np.ndarray
    concave: float
    aspect: float
    angle: float
    lamella: float  # thickness of the spread lamella relative to the centre
    nucleus: tuple[float, float, float, float]  # offset u, offset v, semi-axes a, b

    @classmethod
    def sample(cls, rng, scale: float, cuboidal: bool = False) -> "PolygonShape":
        k = int(rng.integers(4, 7)) if cuboidal else int(rng.integers(5, 9))
        jitter = 0.25 if cuboidal else 0.6
        angles = np.sort((np.arange(k) + rng.uniform(-jitter, jitter, k) / 2) * 2 * np.pi / k) + rng.uniform(0, 6.3)
        radius = rng.uniform(13, 17) if cuboidal else rng.uniform(26, 36)
        spread = 0.1 if cuboidal else 0.28
        radii = radius * scale * rng.uniform(1 - spread, 1 + spread, k)
        na = rng.uniform(6.5, 8.5 if cuboidal else 10.5) * scale
        off = 0.0 if cuboidal else 0.25
        return cls(angles % (2 * np.pi), radii, rng.uniform(0.0, 0.08 if cuboidal else 0.3),
                   rng.uniform(1.0, 1.2 if cuboidal else 1.7), rng.uniform(0, np.pi),
                   rng.uniform(0.5, 0.7) if cuboidal else rng.uniform(0.35, 0.55),
                   (rng.uniform(-off, off) * radius * scale, rng.uniform(-off, off) * radius * scale * 0.5,
                    na, na * rng.uniform(0.7, 0.9)))

    def _outline(self, phi: np.ndarray) -> np.ndarray:
        """Radius of the polygon along each ray (exact straight edges), bowed by ``concave``."""
        order = np.argsort(self.angles)
        a = np.concatenate([self.angles[order], self.angles[order][:1] + 2 * np.pi])
        r = np.concatenate([self.radii[order], self.radii[order][:1]])
        phi = (phi - a[0]) % (2 * np.pi) + a[0]
        i = np.clip(np.searchsorted(a, phi) - 1, 0, len(a) - 2)
        a0, a1, r0, r1 = a[i], a[i + 1], r[i], r[i + 1]
        edge = r0 * r1 * np.sin(a1 - a0) / (r0 * np.sin(phi - a0) + r1 * np.sin(a1 - phi) + 1e-6)
        t = (phi - a0) / (a1 - a0)
        return edge * (1 - self.concave * np.sin(np.pi * t))

    def render(self, sub: tuple[float, float]) -> Patch:
        half = int(self.radii.max() * self.aspect + 3)
        u, v = _frame(half, sub[0], sub[1], self.angle)
        uu = u / self.aspect
        rho = np.sqrt(uu ** 2 + v ** 2)
        outline = self._outline(np.arctan2(v, uu))
        mask = _soft(outline - rho)
        inner = np.clip(1 - rho / np.maximum(outline, 1), 0, 1)
        thick = mask * (self.lamella + (1 - self.lamella) * inner ** 2)
        nu, nv, na, nb = self.nucleus
        return _finish(half, sub, u, v, mask, thick, nu, nv, na, nb, self.angle)


@dataclass
class RoundShape:
    """Small and thick; a doublet when dividing, a blebbed outline when dying."""

    radius: float
    ellipticity: float
    angle: float
    blebs: tuple[float, int, float]  # amplitude, lobes, phase
    doublet: bool

    @classmethod
    def sample(cls, rng, scale: float) -> "RoundShape":
        dying = rng.random() < 0.25
        return cls(rng.uniform(6.0, 8.5) * scale, rng.uniform(1.0, 1.2), rng.uniform(0, np.pi),
                   (rng.uniform(0.03, 0.08) if dying else 0.0, int(rng.integers(3, 6)), rng.uniform(0, 6.3)),
                   bool(rng.random() < 0.15))

    def render(self, sub: tuple[float, float]) -> Patch:
        r = self.radius * (0.8 if self.doublet else 1.0)
        off = 0.95 * r if self.doublet else 0.0
        half = int(r * self.ellipticity + off + 3)
        u, v = _frame(half, sub[0], sub[1], self.angle)
        rho = np.sqrt(((np.abs(u) - off) / self.ellipticity) ** 2 + v ** 2)
        amp, lobes, phase = self.blebs
        outline = r * (1 + amp * np.sin(lobes * np.arctan2(v, u) + phase))
        mask = _soft(outline - rho)
        thick = mask * np.sqrt(np.clip(1 - (rho / outline) ** 2, 0, 1))
        return _finish(half, sub, u, v, mask, thick, 0.0, 0.0, 0.55 * r, 0.5 * r, self.angle, bright=True)
