"""Draws a radiograph-like frontal chest image, and the exact region of every finding it shows.

Everything is vectorised numpy on float32 arrays; shapes that are products of a column profile
and a row profile are built by broadcasting (one array op each), which keeps a 256x256 study
at a few milliseconds.  The image is an attenuation map (air dark, soft tissue grey, bone
bright), then a per-patient window, a smooth intensity field and noise.

Conventions: coordinates are normalised to [0, 1] of the image side; the patient's right is on
the image's left, as on any PA/AP radiograph.  Every component draws its random numbers from
its own stream (anatomy per patient, each finding per study), so removing a finding from a
study leaves the rest of the image bit-identical; tests use this to check that a finding's
region is where the image changed.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from kdistill.labels import FINDINGS, FINDING_INDEX
from kdistill.data.phantom.knowledge import load_knowledge
from kdistill.data.phantom.spec import FindingSpec

_NB = 360  # angular bins of the vessel-marking texture


@dataclasses.dataclass
class RenderedRegion:
    finding: str
    part: str  # "" for a single region, else the side or device it covers
    mask: np.ndarray  # bool SxS


@dataclasses.dataclass
class RenderResult:
    image: np.ndarray  # uint8 SxS
    regions: list[RenderedRegion]
    heart_mask: np.ndarray  # bool SxS, always drawn (cardiomegaly's ground truth)
    thorax: tuple[int, int]  # x extent (pixels) of the thorax at its widest, for the CTR


@dataclasses.dataclass
class _Grid:
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
def _grid(size: int) -> _Grid:
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
    return _Grid(size, x, y, index, falloff, _hat_basis(size, 6), noise, texture)


@dataclasses.dataclass
class _Anatomy:
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


def _anatomy(patient: np.random.Generator, study: np.random.Generator, view: str) -> _Anatomy:
    u = patient.uniform
    a = _Anatomy(
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


class _Canvas:
    """The image under construction: anatomy layers plus finding deltas."""

    def __init__(self, g: _Grid, a: _Anatomy, contrast: float):
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


def _lungs(cv: _Canvas, heart: np.ndarray) -> None:
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


def _heart_geometry(a: _Anatomy) -> tuple[float, float, float, float, float, float]:
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


def _heart(cv: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    a, g, S = cv.a, cv.g, cv.S
    hx, hy, long_ax, short_ax, half_w, half_h = _heart_geometry(a)
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


def _ribs(cv: _Canvas) -> np.ndarray:
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
        cv.ribs[rows, cols] = _rib_profile(phase) * weight + anterior
    return cv.ribs


def _rib_profile(phase: np.ndarray) -> np.ndarray:
    frac = phase - np.floor(phase)
    core = np.clip(1 - ((frac - 0.27) / 0.21) ** 2, 0, 1)
    return np.sqrt(core)  # flat-topped bone with crisp cortical edges


def _clavicles(cv: _Canvas) -> np.ndarray:
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


def _markings(cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    prof = np.zeros(2 * _NB, np.float32)
    near = rng.integers(0, _NB, 22)
    far = rng.integers(0, _NB, 46) + _NB
    prof[near] += rng.uniform(0.6, 1.0, near.size).astype(np.float32)
    prof[far] += rng.uniform(0.3, 0.8, far.size).astype(np.float32)
    prof = np.convolve(np.concatenate([prof[-2:], prof, prof[:2]]), [0.15, 0.5, 1.0, 0.5, 0.15], "same")[2:-2]
    out = np.zeros((cv.S, cv.S), np.float32)
    out[cv.rows] = prof.astype(np.float32)[cv.g.vessel_index[cv.rows]] * cv.g.vessel_falloff[cv.rows]
    return out


# --- findings ------------------------------------------------------------------------------
# Each renderer adds to cv.delta (attenuation; positive = whiter) or the device layer, and
# returns the regions: [(part, bool mask SxS)].

_SEV = {"small": 0, "moderate": 1, "large": 2, None: 1}


def _pick(spec: FindingSpec, values: tuple) -> float:
    return values[_SEV[spec.severity]]


def _p(name: str, key: str, spec: FindingSpec | None = None) -> float:
    """A render number of findings.yaml (per severity where it is a list)."""
    return load_knowledge()[name].param(key, spec.severity if spec is not None else None)


def _gauss_cols(x: np.ndarray, centre: float, width: float, power: int = 2) -> np.ndarray:
    t = (x - centre) / width
    return np.exp(-(t * t if power == 2 else (t * t) ** (power // 2))).astype(np.float32)


def _point_in_lung(cv: _Canvas, side: str, y0: float, y1: float, dn: tuple[float, float], rng: np.random.Generator) -> tuple[float, float]:
    """A random point (x, y) well inside ``side``'s lung, preferably within rows [y0, y1] and
    lateral distances ``dn``; a squeezed lung (large heart, effusion) falls back to any of its
    inner pixels in those rows, then anywhere."""
    S = cv.S
    for _ in range(30):
        xt, yt = cv.x_at(side, rng.uniform(*dn)), rng.uniform(y0, y1)
        if cv.lung[min(S - 1, int(yt * S)), min(S - 1, max(0, int(xt * S)))] > 0.95:
            return xt, yt
    cols = cv.cols(side)
    lung = cv.lung[:, cols] > 0.6
    rows = slice(max(0, int(y0 * S)), min(S, int(y1 * S) + 1))
    ys, xs = np.nonzero(lung[rows])
    offset = rows.start
    if ys.size == 0:
        ys, xs = np.nonzero(lung)
        offset = 0
    if ys.size == 0:
        return cv.x_at(side, 0.5), 0.5 * (y0 + y1)
    i = int(rng.integers(ys.size))
    return (xs[i] + cols.start + 0.5) / S, (ys[i] + offset + 0.5) / S


def _effusion(cv: _Canvas, spec: FindingSpec, rng: np.random.Generator) -> list:
    out = []
    for side in spec.sides:
        cols = cv.cols(side)
        dn = cv.lateral(side)
        h = cv.height(side)
        level = _p("Pleural Effusion", "extent", spec) * rng.uniform(0.85, 1.15)
        q = np.clip((dn - cv.a.mw / cv.a.tw) / (1 - cv.a.mw / cv.a.tw), 0, 1)
        top = cv.a.base[side] - level * h - 0.09 * h * q**3  # meniscus: fluid climbs the lateral wall
        fluid = np.clip((cv.g.y - top) * cv.S / (2.5 * cv.edge), 0, 1)
        lung = cv.lung[:, cols]
        cv.delta[:, cols] += _p("Pleural Effusion", "density") * cv.c * fluid * lung
        out.append((side, cv.full_mask(side, (fluid > 0.5) & (lung > 0.25))))
    return out


def _pneumothorax(cv: _Canvas, spec: FindingSpec, rng: np.random.Generator) -> list:
    out = []
    rows_ = cv.rows
    y = cv.g.y[rows_]
    for side in spec.sides:
        cols = cv.cols(side)
        rim = _p("Pneumothorax", "extent", spec) * rng.uniform(0.85, 1.15) * cv.S
        reach = cv.a.apex + _p("Pneumothorax", "reach", spec) * cv.height(side)
        outer = cv.outer[side]
        rows = np.clip((reach - y) * cv.S / 4, 0, 1)  # fades out below its lower reach
        lung = cv.lung[rows_, cols]
        air = np.clip(rim - outer, 0, 1) * rows * lung
        line = np.exp(-(((outer - rim) / (0.8 * cv.edge)) ** 2)) * rows * (lung > 0.3)
        cv.dim_markings()[rows_, cols] *= 1.0 - air
        cv.delta[rows_, cols] += cv.c * (_p("Pneumothorax", "line") * line - _p("Pneumothorax", "density") * air)
        m = np.zeros((cv.S, cv.S), bool)
        m[rows_, cols] = (air > 0.5) | (line > 0.5)
        out.append(("", m))
    return out


def _mediastinum(cv: _Canvas, spec: FindingSpec, rng: np.random.Generator) -> list:
    a = cv.a
    _, hy, _, _, _, half_h = _heart_geometry(a)
    r0, r1 = cv.px(a.apex - 0.02), cv.px(hy - 0.6 * half_h)
    m = np.zeros((cv.S, cv.S), bool)
    half = a.mw + 0.006
    m[max(0, r0):r1, max(0, cv.px(a.cx - half)) : cv.px(a.cx + half + 0.02)] = True
    return [("", m)]


def _edema(cv: _Canvas, spec: FindingSpec, rng: np.random.Generator) -> list:
    out = []
    amp = _p("Edema", "density", spec) * cv.c
    sx = _p("Edema", "extent", spec)
    sy = 1.5 * sx
    for side in spec.sides:
        cols = cv.cols(side)
        hx = cv.x_at(side, (cv.a.mw + 0.06) / cv.a.tw)
        hy = cv.a.apex + 0.47 * cv.height(side)
        haze = _gauss_cols(cv.xs(side), hx, sx * 1.414) * _gauss_cols(cv.g.y, hy, sy * 1.414)
        lung = cv.lung[:, cols]
        cv.delta[:, cols] += amp * haze * lung
        cv.dim_markings()[:, cols] *= 1.0 - 0.5 * haze  # vessels blur into the haze
        if spec.severity in ("moderate", "large"):  # Kerley B lines at the lateral bases
            for _ in range(4):
                yl = rng.uniform(cv.a.base[side] - 0.14, cv.a.base[side] - 0.04)
                r0, r1 = max(0, cv.px(yl) - 3), min(cv.S, cv.px(yl) + 4)
                line = _gauss_cols(cv.xs(side), cv.x_at(side, 0.93), 0.025, 4) * _gauss_cols(cv.g.y[r0:r1], yl, 1.2 / cv.S)
                cv.delta[r0:r1, cols] += 0.14 * cv.c * line * lung[r0:r1]
        out.append((side, cv.full_mask(side, (haze > 0.35) & (lung > 0.3))))
    return out


def _atelectasis(cv: _Canvas, spec: FindingSpec, rng: np.random.Generator) -> list:
    out = []
    for side in spec.sides:
        cols = cv.cols(side)
        x = cv.xs(side)
        h = cv.height(side)
        xc, y0 = _point_in_lung(cv, side, cv.a.base[side] - 0.26 * h, cv.a.base[side] - 0.12 * h, (0.45, 0.75), rng)
        slope = rng.uniform(-0.25, 0.25)
        window = _gauss_cols(x, xc, rng.uniform(0.09, 0.13), 4)
        lung = cv.lung[:, cols]
        if spec.severity == "large":  # wedge of collapsed lower lobe
            yl = y0 + slope * (x - xc)
            body = np.clip((cv.g.y - yl) * cv.S / (2 * cv.edge), 0, 1) * window
            cv.delta[:, cols] += 0.87 * _p("Atelectasis", "density") * cv.c * body * lung
        else:
            thick = _p("Atelectasis", "extent", spec)
            yl = y0 + slope * (x - xc)
            body = np.exp(-(((cv.g.y - yl) / thick) ** 2)) * window
            cv.delta[:, cols] += _p("Atelectasis", "density") * cv.c * body * lung
        out.append((side, cv.full_mask(side, (body > 0.4) & (lung > 0.3))))
    return out


def _lobar(cv: _Canvas, spec: FindingSpec, rng: np.random.Generator, kind: str, markings: np.ndarray) -> list:
    """Consolidation (dense, homogeneous, air bronchograms), pneumonia (patchy airspace
    opacity) and lung opacity (faint ill-defined blotches), in one zone of one or both lungs."""
    out = []
    for side in spec.sides:
        cols = cv.cols(side)
        x = cv.xs(side)
        y0, y1 = cv.zone_y(side, spec.zone or "lower")
        lung = cv.lung[:, cols]
        if kind == "consolidation":
            rx = _p("Consolidation", "extent", spec) * rng.uniform(0.85, 1.15)
            ry = _pick(spec, (0.04, 0.07, 0.5 * (y1 - y0) + 0.02))
            xc, yc = _point_in_lung(cv, side, y0 + 0.3 * (y1 - y0), y1 - 0.3 * (y1 - y0), (0.4, 0.75), rng)
            region = _gauss_cols(x, xc, rx, 4) * _gauss_cols(cv.g.y, yc, ry, 4)
            bronchi = markings[:, cols]
            cv.delta[:, cols] += cv.c * region * lung * (_p("Consolidation", "density") - 0.9 * bronchi)
        else:
            name = "Pneumonia" if kind == "pneumonia" else "Lung Opacity"
            n = int(_p(name, "blobs", spec))
            amp = _p(name, "density")
            sig = 0.035 if kind == "pneumonia" else 0.045  # pneumonia: smaller, denser, more confluent
            region = np.zeros((cv.S, cols.stop - cols.start), np.float32)
            spread = _p(name, "extent", spec)
            xc, yc = _point_in_lung(cv, side, y0 + 0.25 * (y1 - y0), y1 - 0.25 * (y1 - y0), (0.4, 0.75), rng)
            for _ in range(n):
                bx, by = xc + rng.normal(0, spread), yc + rng.normal(0, spread)
                s = sig * rng.uniform(0.7, 1.3)
                region += rng.uniform(0.7, 1.0) * _gauss_cols(x, bx, s * 1.414) * _gauss_cols(cv.g.y, by, s * 1.414)
            region = np.minimum(region, 1.3)
            cv.delta[:, cols] += amp * cv.c * region * lung
            region = region / max(1e-6, float(region.max()))
        out.append((side if len(spec.sides) > 1 else "", cv.full_mask(side, (region > 0.4) & (lung > 0.3))))
    return out


def _nodule(cv: _Canvas, spec: FindingSpec, rng: np.random.Generator) -> list:
    side = spec.sides[0] if spec.sides else "right"
    y0, y1 = cv.zone_y(side, spec.zone or "middle")
    radius = _p("Lung Lesion", "extent", spec) * rng.uniform(0.85, 1.15)
    S = cv.S
    xc, yc = _point_in_lung(cv, side, y0, y1, (0.35, 0.85), rng)
    rp = radius * S
    r0, r1 = max(0, int(yc * S - rp - 3)), min(S, int(yc * S + rp + 4))
    c0, c1 = max(0, int(xc * S - rp - 3)), min(S, int(xc * S + rp + 4))
    dist = np.sqrt((cv.g.x[:, c0:c1] - xc) ** 2 + (cv.g.y[r0:r1] - yc) ** 2) * S
    lobul = 1.0 + 0.08 * np.sin(3 * np.arctan2(cv.g.y[r0:r1] - yc, cv.g.x[:, c0:c1] - xc) + rng.uniform(0, 6))
    alpha = np.clip(rp * lobul - dist + 0.5, 0, 1)
    dome = np.sqrt(np.clip(1 - (dist / (rp + 1)) ** 2, 0, 1))
    cv.delta[r0:r1, c0:c1] += _p("Lung Lesion", "density") * cv.c * alpha * (0.5 + 0.5 * dome)
    m = np.zeros((S, S), bool)
    m[r0:r1, c0:c1] = alpha > 0.3
    return [("", m)]


def _fracture(cv: _Canvas, spec: FindingSpec, rng: np.random.Generator) -> list:
    side = spec.sides[0] if spec.sides else "left"
    cols = cv.cols(side)
    k = int(spec.extra.get("rib", 6))
    dn = cv.lateral(side)
    dn_f = rng.uniform(0.55, 0.82)
    step = _p("Fracture", "extent", spec)
    phase = cv.rib_phase[side]
    near = np.abs(dn - dn_f) < 0.1  # (1, c)
    band = (phase > k - 0.35) & (phase < k + 0.8) & near
    shifted = phase + step * (dn > dn_f)
    gap = np.abs(dn - dn_f) < max(0.012, 1.6 / (cv.S * cv.a.tw))
    new = _rib_profile(shifted) * ~gap * cv.rib_weight[side] + cv.rib_anterior[side]
    ribs = cv.ribs[cv.rows, cols]  # a view: the edit lands in cv.ribs
    ribs[band] = new[band]
    rows = np.flatnonzero(band.any(axis=1))
    m = np.zeros((cv.S, cv.S), bool)
    if rows.size:
        sub = np.zeros_like(band)
        sub[rows.min() : rows.max() + 1] = near & (np.abs(dn - dn_f) < 0.06)
        m[cv.rows, cols] = sub & band
    return [("", m)]


def _pleural_thickening(cv: _Canvas, spec: FindingSpec, rng: np.random.Generator) -> list:
    out = []
    thick = _p("Pleural Other", "extent", spec) * cv.S
    rows_ = cv.rows
    y = cv.g.y[rows_]
    for side in spec.sides:
        cols = cv.cols(side)
        reach = cv.a.apex + rng.uniform(0.45, 0.7) * cv.height(side)
        rows = np.clip((reach - y) * cv.S / 4, 0, 1)
        lung = cv.lung[rows_, cols]
        band = np.clip(thick - cv.outer[side], 0, 1) * rows * lung
        band *= np.clip(1 + 0.3 * np.sin(y * 60 + rng.uniform(0, 6)), 0, 1.3)  # nodular
        cv.delta[rows_, cols] += _p("Pleural Other", "density") * cv.c * band
        m = np.zeros((cv.S, cv.S), bool)
        m[rows_, cols] = band > 0.4
        out.append((side if len(spec.sides) > 1 else "", m))
    return out


def _bezier(p0, p1, p2, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t**2 * np.array(p2)
    return pts[:, 0], pts[:, 1]


def _draw(cv: _Canvas, xs: np.ndarray, ys: np.ndarray, value: float, width: int, target: np.ndarray) -> None:
    S = cv.S
    xi = np.round(xs * S).astype(int)
    yi = np.round(ys * S).astype(int)
    for dx in range(width):
        for dy in range(width):
            ok = (xi + dx >= 0) & (xi + dx < S) & (yi + dy >= 0) & (yi + dy < S)
            target[yi[ok] + dy, xi[ok] + dx] = value


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    out = m.copy()
    for _ in range(r):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _devices(cv: _Canvas, spec: FindingSpec, rng: np.random.Generator) -> list:
    a, S = cv.a, cv.S
    carina = a.apex + 0.3 * cv.height("right")
    width = max(1, int(round(1.6 * S / 256)))
    n = 3 * S
    out = []
    for device in spec.extra.get("devices", ["ett"]):
        layer = np.zeros((S, S), np.float32)
        if device == "ett":
            tip = carina - spec.extra.get("cm", 4) * 0.011
            for off in (-0.006, 0.006):
                xs, ys = _bezier((a.cx + 0.01 + off, 0.0), (a.cx + off, tip * 0.5), (a.cx + off, tip), n)
                _draw(cv, xs, ys, 0.30, width, layer)
        elif device == "cvc":
            s = -1 if spec.extra.get("cvc_side", "right") == "right" else 1
            xs, ys = _bezier((a.cx + s * 0.1, 0.0), (a.cx + s * 0.06, a.apex + 0.09), (a.cx - 0.025, carina + 0.05), n)
            _draw(cv, xs, ys, 0.45, width, layer)
        elif device == "ngt":
            stomach = (a.cx + 0.14, a.base["left"] + 0.09)
            xs, ys = _bezier((a.cx + 0.012, 0.0), (a.cx + 0.015, a.base["left"] + 0.02), stomach, n)
            _draw(cv, xs, ys, 0.38, width, layer)
        elif device == "pacer":
            gx, gy = a.cx + 0.25, a.apex + 0.05
            r0, r1, c0, c1 = cv.px(gy - 0.025), cv.px(gy + 0.025), cv.px(gx - 0.035), cv.px(gx + 0.035)
            layer[max(0, r0):r1, max(0, c0):min(S, c1)] = 0.75
            hx, hy, _, _, hw, _ = _heart_geometry(a)
            for end in ((a.cx - 0.01, hy - 0.04), (hx + 0.3 * hw, hy + 0.03)):
                xs, ys = _bezier((gx, gy), (a.cx + 0.04, a.apex + 0.12), end, n)
                _draw(cv, xs, ys, 0.5, width, layer)
        np.maximum(cv.devices, layer, out=cv.devices)
        cv.has_devices = True
        out.append((device, _dilate(layer > 0, max(1, S // 128))))
    return out


def _marker(image: np.ndarray) -> None:
    """The shortcut: a small ring in the top-right corner."""
    S = image.shape[0]
    m = max(4, S // 28)
    y0, x0 = max(1, S // 64), S - max(1, S // 64) - m
    image[y0 : y0 + m, x0 : x0 + m] = 0.97
    k = max(1, m // 4)
    image[y0 + k : y0 + m - k, x0 + k : x0 + m - k] = 0.25


def _check(findings: dict[str, FindingSpec]) -> None:
    """Every finding drawn as findings.yaml allows it (names, lateralities, severities)."""
    know = load_knowledge()
    for name, spec in findings.items():
        if name not in know.findings:
            raise ValueError(f"unknown finding {name!r}; expected one of {list(FINDINGS)}")
        info = know[name]
        if spec.laterality not in info.lateralities:
            raise ValueError(f"{name}: laterality {spec.laterality!r} not in {sorted(info.lateralities)} (findings.yaml)")
        if spec.severity is not None and info.severities and spec.severity not in info.severities:
            raise ValueError(f"{name}: severity {spec.severity!r} not in {sorted(info.severities)} (findings.yaml)")


def render_study(
    findings: dict[str, FindingSpec] | None = None,
    *,
    view: str = "PA",
    size: int = 256,
    difficulty: float = 0.5,
    seed: int = 0,
    patient_seed: int | None = None,
    shortcut: bool = False,
    sex: str | None = None,
) -> RenderResult:
    """Render one frontal image with ``findings`` (name -> FindingSpec; absent = not shown).

    The same arguments give the same pixels; dropping a finding changes only its own region
    (and, for cardiomegaly/mediastinal widening, the heart/mediastinum outline).  ``patient_seed``
    fixes the anatomy shared by a subject's studies; ``sex="woman"`` adds breast shadows;
    ``shortcut`` draws the corner marker."""
    findings = findings or {}
    _check(findings)
    if view not in ("PA", "AP"):
        raise ValueError(f"view {view!r}: render_study draws frontal views, 'PA' or 'AP' (laterals: render_lateral)")
    pseed = seed if patient_seed is None else patient_seed
    g = _grid(size)
    S = size
    patient_rng = np.random.default_rng([pseed, 0])
    anatomy = _anatomy(patient_rng, np.random.default_rng([seed, 1]), view)

    def rng_for(name: str) -> np.random.Generator:
        return np.random.default_rng([seed, 100 + FINDING_INDEX[name]])

    if "Cardiomegaly" in findings:
        spec = findings["Cardiomegaly"]
        anatomy.ctr = _p("Cardiomegaly", "extent", spec) * rng_for("Cardiomegaly").uniform(0.99, 1.03) * (1.04 if view == "AP" else 1.0)
    if "Enlarged Cardiomediastinum" in findings:
        spec = findings["Enlarged Cardiomediastinum"]
        anatomy.mw = _p("Enlarged Cardiomediastinum", "extent", spec) * rng_for("Enlarged Cardiomediastinum").uniform(0.97, 1.05)
    contrast = 1.6 - 1.3 * difficulty  # finding contrast: 1.6 (obvious) .. 0.3 (faint)
    cv = _Canvas(g, anatomy, contrast)
    heart, heart_mask = _heart(cv)
    _lungs(cv, heart)
    ribs = _ribs(cv)
    clav = _clavicles(cv)
    markings = _markings(cv, np.random.default_rng([seed, 2]))

    regions: list[RenderedRegion] = []
    for name in FINDINGS:
        if name not in findings or name == "No Finding":
            continue
        spec, rng = findings[name], rng_for(name)
        if name == "Pleural Effusion":
            parts = _effusion(cv, spec, rng)
        elif name == "Pneumothorax":
            parts = _pneumothorax(cv, spec, rng)
        elif name == "Cardiomegaly":  # drawn as the heart's size (set above); its region is the heart
            parts = [("", heart_mask.copy())]
        elif name == "Enlarged Cardiomediastinum":
            parts = _mediastinum(cv, spec, rng)
        elif name == "Edema":
            parts = _edema(cv, spec, rng)
        elif name == "Atelectasis":
            parts = _atelectasis(cv, spec, rng)
        elif name == "Consolidation":
            parts = _lobar(cv, spec, rng, "consolidation", markings)
        elif name == "Pneumonia":
            parts = _lobar(cv, spec, rng, "pneumonia", markings)
        elif name == "Lung Opacity":
            parts = _lobar(cv, spec, rng, "opacity", markings)
        elif name == "Lung Lesion":
            parts = _nodule(cv, spec, rng)
        elif name == "Fracture":
            parts = _fracture(cv, spec, rng)
        elif name == "Pleural Other":
            parts = _pleural_thickening(cv, spec, rng)
        elif name == "Support Devices":
            parts = _devices(cv, spec, rng)
        else:  # pragma: no cover - FINDINGS is fixed
            raise KeyError(name)
        regions.extend(RenderedRegion(name, part, mask) for part, mask in parts if mask.any())

    # Compose the attenuation map (in place: this runs once per study on SxS float32 arrays).
    a = anatomy
    x, y = g.x, g.y
    shoulder = np.clip((0.22 - y) / 0.1, 0, 1)
    body_w = a.tw + 0.085 + 0.07 * shoulder  # (S, 1)
    att = np.subtract(body_w, np.abs(x - a.cx), dtype=np.float32)
    att *= S / (3 * cv.edge)
    att += 0.5
    np.clip(att, 0.0, 1.0, out=att)
    att *= 0.42 + 0.22 * np.sqrt(np.clip(1 - ((x - a.cx) / (a.tw + 0.1)) ** 2, 0, 1))  # body: thickest mid-line
    c0, c1 = max(0, cv.px(a.cx - 0.035)), min(S, cv.px(a.cx + 0.035) + 1)
    att[:, c0:c1] += (0.07 * np.clip(1 - ((x[:, c0:c1] - a.cx) / 0.032) ** 2, 0, 1)) * (0.85 + 0.15 * np.cos(y * (2 * np.pi / 0.038)))
    hr, hc = cv.heart_box
    att[hr, hc] += 0.05 * heart[hr, hc]
    for side in ("right", "left"):  # hilar vessels: soft densities at the medial mid lungs
        hx = cv.x_at(side, (a.mw + 0.045) / a.tw)
        hy = a.apex + 0.42 * cv.height(side)
        r0, r1 = max(0, cv.px(hy - 0.12)), min(S, cv.px(hy + 0.12))
        att[r0:r1, cv.cols(side)] += 0.10 * _gauss_cols(cv.xs(side), hx, 0.035) * _gauss_cols(y[r0:r1], hy, 0.06) * cv.lung[r0:r1, cv.cols(side)]
    # Air depth: thickest lung mid-field; apices (shoulder girdle) and bases (soft tissue) are greyer.
    depth_rows = 0.30 + 0.10 * _gauss_cols(y, a.apex + 0.45 * cv.height("left"), 0.3)
    depth_cols = 0.9 + 0.1 * _gauss_cols(x, a.cx, 0.25)
    rows = cv.rows  # lungs and ribs live in these rows only
    air = markings[rows]  # reused buffer: markings are not needed after this
    air *= -0.22
    if cv.marking_gain is not None:
        air *= cv.marking_gain[rows]
    air += depth_rows[rows] * depth_cols
    air *= cv.lung[rows]
    att[rows] -= air
    bone = ribs[rows]
    bone *= 0.10
    att[rows] += bone
    if sex == "woman":  # breast shadows grey the lower lateral lung fields
        amp = np.random.default_rng([pseed, 5]).uniform(0.03, 0.07)
        for side in ("right", "left"):
            cols = cv.cols(side)
            yb = a.base[side] - 0.1
            r0 = max(0, cv.px(yb - 0.25))
            xc = cv.x_at(side, 0.75)
            edge = yb + 0.07 - 0.12 * ((cv.xs(side) - xc) / 0.2) ** 2  # rounded lower contour
            soft = _gauss_cols(cv.xs(side), xc, 0.22, 4) * np.clip((edge - y[r0:]) * S / 3, 0, 1) * _gauss_cols(y[r0:], yb, 0.14)
            att[r0:, cols] += amp * soft
    att[cv.clav_rows] += clav
    att += cv.delta
    if cv.has_devices:
        att += cv.devices
    trachea_rows = slice(0, cv.px(a.apex + 0.3 * cv.height("right")))
    att[trachea_rows] -= 0.09 * _gauss_cols(x, a.cx, 0.016, 4)
    bubble_r0 = cv.px(a.base["left"] + 0.01)
    att[bubble_r0:] -= 0.12 * _gauss_cols(x, a.cx + 0.16, 0.05, 4) * _gauss_cols(y[bubble_r0:], a.base["left"] + 0.06, 0.03, 4)
    if view == "AP":  # scapulae project over the upper lateral lungs
        r1 = min(S, cv.px(a.apex + 0.4))
        for sgn in (-1, 1):
            att[:r1] += 0.06 * _gauss_cols(x, a.cx + sgn * (a.tw - 0.02), 0.05, 4) * _gauss_cols(y[:r1], a.apex + 0.16, 0.12, 4)

    noise_rng = np.random.default_rng([seed, 3])
    img = att
    img *= a.gain
    img += g.basis_low @ noise_rng.normal(0, 0.035, (6, 6)).astype(np.float32) @ g.basis_low.T
    img += a.offset + 0.08
    oy, ox, my, mx = noise_rng.integers(0, S, 4)
    mottle = g.texture[my : my + S, mx : mx + S]
    img += mottle * np.float32(0.008 + 0.02 * difficulty)
    sigma = (0.01 + 0.06 * difficulty) * (1.25 if view == "AP" else 1.0)
    grain = g.noise[oy : oy + S, ox : ox + S]
    img += (grain if noise_rng.random() < 0.5 else grain.T) * np.float32(sigma)
    if shortcut:
        _marker(img)
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    image = img.astype(np.uint8)
    thorax = (max(0, cv.px(a.cx - a.tw)), min(S, cv.px(a.cx + a.tw)))
    return RenderResult(image=image, regions=regions, heart_mask=heart_mask, thorax=thorax)
