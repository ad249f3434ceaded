"""The normal chest of a phantom frontal radiograph: the pixel grid, the patient's anatomy, the
canvas a study is drawn on, and the anatomy layers (lungs, heart, ribs, clavicles, vessel
markings).  Findings are painted on top by ``painters.py``; ``render.py`` composes the image.

Everything is vectorised numpy on float32 arrays; shapes that are products of a column profile
and a row profile are built by broadcasting (one array op each).  Coordinates are normalised
to [0, 1] of the image side; the patient's right is on the image's left, as on any PA/AP
radiograph.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

_NB = 360  # angular bins of the vessel-marking texture

@dataclasses.dataclass
class Grid:
    size: int
    x: np.ndarray  # (1, S) normalised pixel centres
    y: np.ndarray  # (S, 1)
    vessel_index: np.ndarray  # (S, S) int: angular bin around the nearer hilum (+_NB past the split)
    vessel_falloff: np.ndarray  # (S, S) float32
    basis_low: np.ndarray  # (S, 6) smooth interpolation basis
    noise: np.ndarray  # (2S, 2S) standard normal; a study takes a random window (cheap)
    texture: np.ndarray  # (2S, 2S) smooth mottle of unit spread, windowed the same way


def _hat_basis(size: int, knots: int) -> np.ndarray:
    t = (np.arange(size) + 0.5) / size * (knots - 1)
    b = np.maximum(0.0, 1.0 - np.abs(t[:, None] - np.arange(knots)[None, :]))
    b = b * b * (3 - 2 * b)  # smoothstep weights: no visible kinks
    return (b / b.sum(axis=1, keepdims=True)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def grid(size: int) -> Grid:
    c = ((np.arange(size) + 0.5) / size).astype(np.float32)
    x, y = c[None, :], c[:, None]
    hx = np.where(x < 0.5, 0.40, 0.60).astype(np.float32)  # hila
    dx, dy = x - hx, y - 0.45
    r = np.sqrt(dx * dx + dy * dy)
    # Vessels wind a little as they leave the hilum instead of running as straight spokes.
    ang = np.arctan2(dy, dx) + 0.035 * np.sin(r * 40 + 3 * np.arctan2(dy, dx)) + 0.015 * np.sin(r * 100)
    index = ((ang + math.pi) / (2 * math.pi) * _NB).astype(np.int32) % _NB
    index = index + _NB * (r > 0.13)
    falloff = (np.exp(-r / 0.2) * np.clip((r - 0.035) / 0.06, 0, 1)).astype(np.float32)
    rng = np.random.default_rng(size)
    noise = rng.standard_normal((2 * size, 2 * size), dtype=np.float32)
    basis = _hat_basis(2 * size, 48)
    texture = basis @ rng.standard_normal((48, 48)).astype(np.float32) @ basis.T
    texture /= texture.std()
    return Grid(size, x, y, index, falloff, _hat_basis(size, 6), noise, texture)


@dataclasses.dataclass
class Anatomy:
    cx: float
    tw: float  # thorax half-width (lateral lung wall)
    apex: float
    base: dict[str, float]  # costophrenic level per patient side
    dome: float
    mw: float  # superior mediastinum half-width
    ctr: float  # cardiothoracic ratio
    rib_sp: float
    rib_y0: float
    rib_curve: float
    clav_y: float
    gain: float
    offset: float
    view: str


def patient_anatomy(patient: np.random.Generator, study: np.random.Generator, view: str) -> Anatomy:
    u = patient.uniform
    a = Anatomy(
        cx=0.5 + patient.normal(0, 0.008),
        tw=u(0.335, 0.385),
        apex=u(0.12, 0.155),
        base={"left": u(0.74, 0.78)},
        dome=u(0.045, 0.07),
        mw=u(0.062, 0.078),
        ctr=u(0.39, 0.45),
        rib_sp=u(0.060, 0.068),
        rib_y0=u(0.07, 0.10),
        rib_curve=u(0.22, 0.30),
        clav_y=u(0.15, 0.175),
        gain=u(0.88, 1.12),
        offset=patient.normal(0.0, 0.03),
        view=view,
    )
    a.base["right"] = a.base["left"] - u(0.01, 0.03)  # the right hemidiaphragm sits higher
    breath = study.normal(0.0, 0.008)  # inspiration differs between studies of one patient
    for side in a.base:
        a.base[side] += breath
    if view == "AP":  # supine/portable: magnified heart, poorer inspiration, flatter contrast
        a.ctr = min(a.ctr * 1.1, 0.49)  # magnified, yet a normal heart stays under half the thorax
        a.mw *= 1.1
        for side in a.base:
            a.base[side] -= 0.035
        a.clav_y -= 0.025
        a.rib_curve *= 0.6
        a.gain *= 0.85
    return a


class Canvas:
    """The image under construction: anatomy layers plus finding deltas."""

    def __init__(self, g: Grid, a: Anatomy, contrast: float):
        self.g, self.a, self.c = g, a, contrast
        S = self.S = g.size
        self.edge = max(1.0, 1.2 * S / 256)
        self.split = min(S - 1, max(1, int(round(a.cx * S))))
        self.delta = np.zeros((S, S), np.float32)  # finding attenuation
        self.devices = np.zeros((S, S), np.float32)
        self.has_devices = False
        self._marking_gain: np.ndarray | None = None  # made on first use (most studies never dim vessels)
        self.heart_box = (slice(0, 0), slice(0, 0))
        self.clav_rows = slice(0, 0)
        # Rows that can hold lung or rib: the per-pixel anatomy work is done on these only.
        self.rows = slice(max(0, self.px(a.apex - 0.07)), min(S, self.px(max(a.base.values()) + 0.08)))
        self.lung = np.zeros((S, S), np.float32)
        self.ribs = np.zeros((S, S), np.float32)
        self.outer: dict[str, np.ndarray] = {}  # px from each lung's outer (lateral/apical) wall, rows self.rows
        self.rib_phase: dict[str, np.ndarray] = {}  # posterior rib k spans phase [k, k + 0.5)
        self.rib_weight: dict[str, np.ndarray] = {}
        self.rib_anterior: dict[str, np.ndarray] = {}
        # Set by render_study once the anatomy is drawn; painters read them.
        self.heart_mask: np.ndarray = None  # type: ignore[assignment]  # bool SxS, the heart's exact outline
        self.markings: np.ndarray = None  # type: ignore[assignment]  # float32 SxS vessel markings (air bronchograms)

    @property
    def marking_gain(self) -> np.ndarray | None:
        return self._marking_gain

    def dim_markings(self) -> np.ndarray:
        """The vessel-marking multiplier, for findings that hide or blur vessels."""
        if self._marking_gain is None:
            self._marking_gain = np.ones((self.S, self.S), np.float32)
        return self._marking_gain

    # --- geometry helpers -------------------------------------------------------------------
    def cols(self, side: str) -> slice:
        """Image columns of the patient's ``side`` (patient right = image left)."""
        return slice(0, self.split) if side == "right" else slice(self.split, self.S)

    def xs(self, side: str) -> np.ndarray:
        return self.g.x[:, self.cols(side)]

    def lateral(self, side: str) -> np.ndarray:
        """(1, c) distance from the midline, normalised by the thorax half-width."""
        return np.abs(self.xs(side) - self.a.cx) / self.a.tw

    def x_at(self, side: str, dn: float) -> float:
        """Normalised x of a point ``dn`` thorax half-widths lateral on ``side``."""
        return self.a.cx + (-1 if side == "right" else 1) * dn * self.a.tw

    def height(self, side: str) -> float:
        return self.a.base[side] - self.a.apex

    def zone_y(self, side: str, zone: str) -> tuple[float, float]:
        h, top = self.height(side), self.a.apex
        lo, hi = {"upper": (0.08, 0.38), "middle": (0.38, 0.64), "lower": (0.62, 0.92)}[zone]
        return top + lo * h, top + hi * h

    def mediastinum_halfwidth(self, side: str) -> np.ndarray:
        """(S, 1) mediastinal half-width per row, with the aortic knob on the patient's left."""
        y = self.g.y
        a = self.a
        w = np.full_like(y, a.mw)
        w = np.where(y < a.apex, a.mw * 0.85, w)
        if side == "left":
            w = w + 0.022 * np.exp(-(((y - (a.apex + 0.15)) / 0.035) ** 2))
        return w

    def px(self, v: float) -> int:
        return int(round(v * self.S))

    def full_mask(self, side: str, part: np.ndarray) -> np.ndarray:
        m = np.zeros((self.S, self.S), bool)
        m[:, self.cols(side)] = part
        return m


def draw_lungs(cv: Canvas, heart: np.ndarray) -> None:
    a, g, S = cv.a, cv.g, cv.S
    rows = cv.rows
    y = g.y[rows]
    for side in ("right", "left"):
        cols = cv.cols(side)
        d = np.abs(g.x[:, cols] - a.cx)  # (1, c)
        base = a.base[side]
        ax = (a.tw - a.mw) * 0.62
        centre = a.tw - ax
        ay = base - a.apex
        u = (d - centre) / ax
        v = (y - base) / ay
        u2 = u * u
        r = u2 * u2 + v * v  # boxy superellipse: steep lateral wall, rounded apex
        grad = np.sqrt((4 * u2 * u / (ax * S)) ** 2 + (2 * v / (ay * S)) ** 2) + 1e-6
        outer = (1.0 - r) / grad
        dome_y = base - a.dome * (1.0 - np.clip(u, -1, 1) ** 2)
        m = np.minimum(outer, (dome_y - y) * S)
        m = np.minimum(m, (d - cv.mediastinum_halfwidth(side)[rows]) * S)
        alpha = np.clip(0.5 + m / cv.edge, 0.0, 1.0)
        alpha *= 1.0 - heart[rows, cols]
        cv.lung[rows, cols] = alpha
        cv.outer[side] = outer  # rows cv.rows only


_HEART_TILT = math.radians(35)  # long axis from the base (upper right) to the apex (lower left)
_HEART_ASPECT = 0.8  # short / long axis


def heart_geometry(a: Anatomy) -> tuple[float, float, float, float, float, float]:
    """(centre x, centre y, long semi-axis, short semi-axis, horizontal half-extent, vertical
    half-extent) of the tilted heart ellipse; its horizontal extent is ``ctr`` x the thorax width."""
    c, s = math.cos(_HEART_TILT), math.sin(_HEART_TILT)
    half_w = a.ctr * a.tw
    long_ax = half_w / math.sqrt(c * c + (_HEART_ASPECT * s) ** 2)
    short_ax = _HEART_ASPECT * long_ax
    half_h = math.sqrt((long_ax * s) ** 2 + (short_ax * c) ** 2)
    hx = a.cx + min(0.3 * half_w, 0.84 * a.tw - half_w)  # about two thirds left of the midline
    hy = a.base["left"] - a.dome - 0.45 * half_h + 0.02  # the lower part sinks behind the diaphragm
    return hx, hy, long_ax, short_ax, half_w, half_h


def draw_heart(cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
    a, g, S = cv.a, cv.g, cv.S
    hx, hy, long_ax, short_ax, half_w, half_h = heart_geometry(a)
    r0, r1 = max(0, cv.px(hy - half_h) - 2), min(S, cv.px(hy + half_h) + 3)
    c0, c1 = max(0, cv.px(hx - half_w) - 2), min(S, cv.px(hx + half_w) + 3)
    dx, dy = g.x[:, c0:c1] - hx, g.y[r0:r1] - hy
    c, s = math.cos(_HEART_TILT), math.sin(_HEART_TILT)
    along = (dx * c + dy * s) / long_ax
    across = (dy * c - dx * s) / short_ax
    e = 1.0 - along * along - across * across
    alpha = np.zeros((S, S), np.float32)
    alpha[r0:r1, c0:c1] = np.clip(0.5 + e * (short_ax * S / 2 / cv.edge), 0.0, 1.0)
    mask = np.zeros((S, S), bool)
    mask[r0:r1, c0:c1] = e > 0
    cv.heart_box = (slice(r0, r1), slice(c0, c1))
    return alpha, mask


def draw_ribs(cv: Canvas) -> np.ndarray:
    a, g = cv.a, cv.g
    rows = cv.rows
    y = g.y[rows]
    row_region = np.clip((y - (a.apex - 0.04)) * 40, 0, 1) * np.clip((max(a.base.values()) + 0.04 - y) * 30, 0, 1)
    for side in ("right", "left"):
        cols = cv.cols(side)
        dn = cv.lateral(side)
        weight = row_region * (np.clip((1.04 - dn) * 25, 0, 1) * np.clip((dn - 0.07) * 20, 0, 1))
        phase = (y - a.rib_y0 - a.rib_curve * (dn - 0.3) ** 2) / a.rib_sp
        ant = (y - a.rib_y0 - 0.04 + 0.13 * dn) / (a.rib_sp * 1.2)
        frac = ant - np.floor(ant)
        anterior = 0.35 * np.clip(1 - ((frac - 0.2) / 0.14) ** 2, 0, 1) * weight
        cv.rib_phase[side], cv.rib_weight[side], cv.rib_anterior[side] = phase, weight, anterior  # rows cv.rows
        cv.ribs[rows, cols] = rib_profile(phase) * weight + anterior
    return cv.ribs


def rib_profile(phase: np.ndarray) -> np.ndarray:
    frac = phase - np.floor(phase)
    core = np.clip(1 - ((frac - 0.27) / 0.21) ** 2, 0, 1)
    return np.sqrt(core)  # flat-topped bone with crisp cortical edges


def draw_clavicles(cv: Canvas) -> np.ndarray:
    """Clavicle layer for rows ``cv.clav_rows`` only."""
    a, g, S = cv.a, cv.g, cv.S
    r0, r1 = max(0, cv.px(a.clav_y - 0.12)), min(S, cv.px(a.clav_y + 0.05))
    cv.clav_rows = slice(r0, r1)
    out = np.zeros((r1 - r0, S), np.float32)
    y = g.y[r0:r1]
    for side in ("right", "left"):
        cols = cv.cols(side)
        dn = cv.lateral(side)
        yc = a.clav_y - 0.075 * dn + 0.018 * np.sin(np.pi * np.clip(dn, 0, 1))
        band = np.clip(1 - ((y - yc) / 0.016) ** 2, 0, 1)
        out[:, cols] = np.sqrt(band) * (np.clip((dn - 0.06) * 30, 0, 1) * np.clip((1.15 - dn) * 20, 0, 1))
    out *= 0.18
    return out


def draw_markings(cv: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Vessel markings: a random angular profile of branches around each hilum, fading outwards."""
    prof = np.zeros(2 * _NB, np.float32)
    near = rng.integers(0, _NB, 22)
    far = rng.integers(0, _NB, 46) + _NB
    prof[near] += rng.uniform(0.6, 1.0, near.size).astype(np.float32)
    prof[far] += rng.uniform(0.3, 0.8, far.size).astype(np.float32)
    prof = np.convolve(np.concatenate([prof[-2:], prof, prof[:2]]), [0.15, 0.5, 1.0, 0.5, 0.15], "same")[2:-2]
    out = np.zeros((cv.S, cv.S), np.float32)
    out[cv.rows] = prof.astype(np.float32)[cv.g.vessel_index[cv.rows]] * cv.g.vessel_falloff[cv.rows]
    return out


def gauss_cols(x: np.ndarray, centre: float, width: float, power: int = 2) -> np.ndarray:
    """exp(-t^power), t = (x - centre) / width, as float32: the soft profile every layer is made of."""
    t = (x - centre) / width
    return np.exp(-(t * t if power == 2 else (t * t) ** (power // 2))).astype(np.float32)

