"""The findings of a phantom frontal radiograph: one painter per finding, chosen through
``PAINTERS`` (finding name -> painter), so adding a finding is one entry here (and its entry in
``kdistill/data/findings.yaml``, which holds every painter's numbers).

A painter ``paint(cv, spec, rng) -> [(part, mask)]`` adds to ``cv.delta`` (attenuation;
positive = whiter), ``cv.devices``, ``cv.ribs`` or the vessel-marking gain, and returns the
finding's regions: ``part`` is "" for a single region, else the side or device it covers, and
``mask`` a bool SxS array.  ``rng`` is the finding's own stream, so a painter's draws never
move another finding's pixels.  ``RESHAPERS`` hold the findings drawn as a change of the
anatomy itself (the heart's and the mediastinum's size); they run before the anatomy is drawn.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from kdistill.data.phantom.anatomy import Anatomy, Canvas, gauss_cols, heart_geometry, rib_profile
from kdistill.data.phantom.knowledge import load_knowledge
from kdistill.data.phantom.spec import FindingSpec

Parts = list[tuple[str, np.ndarray]]  # (part, bool SxS mask) per region
Painter = Callable[[Canvas, FindingSpec, np.random.Generator], Parts]
Reshaper = Callable[[Anatomy, FindingSpec, np.random.Generator], None]

_SEV = {"small": 0, "moderate": 1, "large": 2, None: 1}


def _pick(spec: FindingSpec, values: tuple) -> float:
    return values[_SEV[spec.severity]]


def param(name: str, key: str, spec: FindingSpec | None = None) -> float:
    """A render number of findings.yaml (per severity where it is a list)."""
    return load_knowledge()[name].param(key, spec.severity if spec is not None else None)


def _point_in_lung(cv: Canvas, side: str, y0: float, y1: float, dn: tuple[float, float], rng: np.random.Generator) -> tuple[float, float]:
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


def paint_effusion(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    out = []
    for side in spec.sides:
        cols = cv.cols(side)
        dn = cv.lateral(side)
        h = cv.height(side)
        level = param("Pleural Effusion", "extent", spec) * rng.uniform(0.85, 1.15)
        q = np.clip((dn - cv.a.mw / cv.a.tw) / (1 - cv.a.mw / cv.a.tw), 0, 1)
        top = cv.a.base[side] - level * h - 0.09 * h * q**3  # meniscus: fluid climbs the lateral wall
        fluid = np.clip((cv.g.y - top) * cv.S / (2.5 * cv.edge), 0, 1)
        lung = cv.lung[:, cols]
        cv.delta[:, cols] += param("Pleural Effusion", "density") * cv.c * fluid * lung
        out.append((side, cv.full_mask(side, (fluid > 0.5) & (lung > 0.25))))
    return out


def paint_pneumothorax(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    out = []
    rows_ = cv.rows
    y = cv.g.y[rows_]
    for side in spec.sides:
        cols = cv.cols(side)
        rim = param("Pneumothorax", "extent", spec) * rng.uniform(0.85, 1.15) * cv.S
        reach = cv.a.apex + param("Pneumothorax", "reach", spec) * cv.height(side)
        outer = cv.outer[side]
        rows = np.clip((reach - y) * cv.S / 4, 0, 1)  # fades out below its lower reach
        lung = cv.lung[rows_, cols]
        air = np.clip(rim - outer, 0, 1) * rows * lung
        line = np.exp(-(((outer - rim) / (0.8 * cv.edge)) ** 2)) * rows * (lung > 0.3)
        cv.dim_markings()[rows_, cols] *= 1.0 - air
        cv.delta[rows_, cols] += cv.c * (param("Pneumothorax", "line") * line - param("Pneumothorax", "density") * air)
        m = np.zeros((cv.S, cv.S), bool)
        m[rows_, cols] = (air > 0.5) | (line > 0.5)
        out.append(("", m))
    return out


def paint_mediastinum(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    a = cv.a
    _, hy, _, _, _, half_h = heart_geometry(a)
    r0, r1 = cv.px(a.apex - 0.02), cv.px(hy - 0.6 * half_h)
    m = np.zeros((cv.S, cv.S), bool)
    half = a.mw + 0.006
    m[max(0, r0):r1, max(0, cv.px(a.cx - half)) : cv.px(a.cx + half + 0.02)] = True
    return [("", m)]


def paint_edema(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    out = []
    amp = param("Edema", "density", spec) * cv.c
    sx = param("Edema", "extent", spec)
    sy = 1.5 * sx
    for side in spec.sides:
        cols = cv.cols(side)
        hx = cv.x_at(side, (cv.a.mw + 0.06) / cv.a.tw)
        hy = cv.a.apex + 0.47 * cv.height(side)
        haze = gauss_cols(cv.xs(side), hx, sx * 1.414) * gauss_cols(cv.g.y, hy, sy * 1.414)
        lung = cv.lung[:, cols]
        cv.delta[:, cols] += amp * haze * lung
        cv.dim_markings()[:, cols] *= 1.0 - 0.5 * haze  # vessels blur into the haze
        if spec.severity in ("moderate", "large"):  # Kerley B lines at the lateral bases
            for _ in range(4):
                yl = rng.uniform(cv.a.base[side] - 0.14, cv.a.base[side] - 0.04)
                r0, r1 = max(0, cv.px(yl) - 3), min(cv.S, cv.px(yl) + 4)
                line = gauss_cols(cv.xs(side), cv.x_at(side, 0.93), 0.025, 4) * gauss_cols(cv.g.y[r0:r1], yl, 1.2 / cv.S)
                cv.delta[r0:r1, cols] += 0.14 * cv.c * line * lung[r0:r1]
        out.append((side, cv.full_mask(side, (haze > 0.35) & (lung > 0.3))))
    return out


def paint_atelectasis(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    out = []
    for side in spec.sides:
        cols = cv.cols(side)
        x = cv.xs(side)
        h = cv.height(side)
        xc, y0 = _point_in_lung(cv, side, cv.a.base[side] - 0.26 * h, cv.a.base[side] - 0.12 * h, (0.45, 0.75), rng)
        slope = rng.uniform(-0.25, 0.25)
        window = gauss_cols(x, xc, rng.uniform(0.09, 0.13), 4)
        lung = cv.lung[:, cols]
        if spec.severity == "large":  # wedge of collapsed lower lobe
            yl = y0 + slope * (x - xc)
            body = np.clip((cv.g.y - yl) * cv.S / (2 * cv.edge), 0, 1) * window
            cv.delta[:, cols] += 0.87 * param("Atelectasis", "density") * cv.c * body * lung
        else:
            thick = param("Atelectasis", "extent", spec)
            yl = y0 + slope * (x - xc)
            body = np.exp(-(((cv.g.y - yl) / thick) ** 2)) * window
            cv.delta[:, cols] += param("Atelectasis", "density") * cv.c * body * lung
        out.append((side, cv.full_mask(side, (body > 0.4) & (lung > 0.3))))
    return out


def paint_consolidation(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    """Dense, homogeneous, sharply bounded opacity with dark air bronchograms, in one zone."""
    out = []
    for side in spec.sides:
        cols, x, (y0, y1), lung = cv.cols(side), cv.xs(side), cv.zone_y(side, spec.zone or "lower"), cv.lung[:, cv.cols(side)]
        rx = param("Consolidation", "extent", spec) * rng.uniform(0.85, 1.15)
        ry = _pick(spec, (0.04, 0.07, 0.5 * (y1 - y0) + 0.02))
        xc, yc = _point_in_lung(cv, side, y0 + 0.3 * (y1 - y0), y1 - 0.3 * (y1 - y0), (0.4, 0.75), rng)
        region = gauss_cols(x, xc, rx, 4) * gauss_cols(cv.g.y, yc, ry, 4)
        bronchi = cv.markings[:, cols]
        cv.delta[:, cols] += cv.c * region * lung * (param("Consolidation", "density") - 0.9 * bronchi)
        out.append((side if len(spec.sides) > 1 else "", cv.full_mask(side, (region > 0.4) & (lung > 0.3))))
    return out


def _blotches(cv: Canvas, spec: FindingSpec, rng: np.random.Generator, name: str, sig: float) -> Parts:
    """Several soft blotches of width ``sig`` around one point in one zone of each lung."""
    out = []
    for side in spec.sides:
        cols, x, (y0, y1), lung = cv.cols(side), cv.xs(side), cv.zone_y(side, spec.zone or "lower"), cv.lung[:, cv.cols(side)]
        n = int(param(name, "blobs", spec))
        amp = param(name, "density")
        region = np.zeros((cv.S, cols.stop - cols.start), np.float32)
        spread = param(name, "extent", spec)
        xc, yc = _point_in_lung(cv, side, y0 + 0.25 * (y1 - y0), y1 - 0.25 * (y1 - y0), (0.4, 0.75), rng)
        for _ in range(n):
            bx, by = xc + rng.normal(0, spread), yc + rng.normal(0, spread)
            s = sig * rng.uniform(0.7, 1.3)
            region += rng.uniform(0.7, 1.0) * gauss_cols(x, bx, s * 1.414) * gauss_cols(cv.g.y, by, s * 1.414)
        region = np.minimum(region, 1.3)
        cv.delta[:, cols] += amp * cv.c * region * lung
        region = region / max(1e-6, float(region.max()))
        out.append((side if len(spec.sides) > 1 else "", cv.full_mask(side, (region > 0.4) & (lung > 0.3))))
    return out


def paint_pneumonia(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    """Patchy airspace opacity: smaller, denser, more confluent blotches than lung opacity."""
    return _blotches(cv, spec, rng, "Pneumonia", 0.035)


def paint_lung_opacity(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    """A few faint, ill-defined blotches."""
    return _blotches(cv, spec, rng, "Lung Opacity", 0.045)


def paint_cardiomegaly(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    """Drawn as the heart's size (``reshape_cardiomegaly``, before the anatomy); its region is the heart."""
    return [("", cv.heart_mask.copy())]


def paint_nodule(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    side = spec.sides[0] if spec.sides else "right"
    y0, y1 = cv.zone_y(side, spec.zone or "middle")
    radius = param("Lung Lesion", "extent", spec) * rng.uniform(0.85, 1.15)
    S = cv.S
    xc, yc = _point_in_lung(cv, side, y0, y1, (0.35, 0.85), rng)
    rp = radius * S
    r0, r1 = max(0, int(yc * S - rp - 3)), min(S, int(yc * S + rp + 4))
    c0, c1 = max(0, int(xc * S - rp - 3)), min(S, int(xc * S + rp + 4))
    dist = np.sqrt((cv.g.x[:, c0:c1] - xc) ** 2 + (cv.g.y[r0:r1] - yc) ** 2) * S
    lobul = 1.0 + 0.08 * np.sin(3 * np.arctan2(cv.g.y[r0:r1] - yc, cv.g.x[:, c0:c1] - xc) + rng.uniform(0, 6))
    alpha = np.clip(rp * lobul - dist + 0.5, 0, 1)
    dome = np.sqrt(np.clip(1 - (dist / (rp + 1)) ** 2, 0, 1))
    cv.delta[r0:r1, c0:c1] += param("Lung Lesion", "density") * cv.c * alpha * (0.5 + 0.5 * dome)
    m = np.zeros((S, S), bool)
    m[r0:r1, c0:c1] = alpha > 0.3
    return [("", m)]


def paint_fracture(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    side = spec.sides[0] if spec.sides else "left"
    cols = cv.cols(side)
    k = int(spec.extra.get("rib", 6))
    dn = cv.lateral(side)
    dn_f = rng.uniform(0.55, 0.82)
    step = param("Fracture", "extent", spec)
    phase = cv.rib_phase[side]
    near = np.abs(dn - dn_f) < 0.1  # (1, c)
    band = (phase > k - 0.35) & (phase < k + 0.8) & near
    shifted = phase + step * (dn > dn_f)
    gap = np.abs(dn - dn_f) < max(0.012, 1.6 / (cv.S * cv.a.tw))
    new = rib_profile(shifted) * ~gap * cv.rib_weight[side] + cv.rib_anterior[side]
    ribs = cv.ribs[cv.rows, cols]  # a view: the edit lands in cv.ribs
    ribs[band] = new[band]
    rows = np.flatnonzero(band.any(axis=1))
    m = np.zeros((cv.S, cv.S), bool)
    if rows.size:
        sub = np.zeros_like(band)
        sub[rows.min() : rows.max() + 1] = near & (np.abs(dn - dn_f) < 0.06)
        m[cv.rows, cols] = sub & band
    return [("", m)]


def paint_pleural_thickening(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
    out = []
    thick = param("Pleural Other", "extent", spec) * cv.S
    rows_ = cv.rows
    y = cv.g.y[rows_]
    for side in spec.sides:
        cols = cv.cols(side)
        reach = cv.a.apex + rng.uniform(0.45, 0.7) * cv.height(side)
        rows = np.clip((reach - y) * cv.S / 4, 0, 1)
        lung = cv.lung[rows_, cols]
        band = np.clip(thick - cv.outer[side], 0, 1) * rows * lung
        band *= np.clip(1 + 0.3 * np.sin(y * 60 + rng.uniform(0, 6)), 0, 1.3)  # nodular
        cv.delta[rows_, cols] += param("Pleural Other", "density") * cv.c * band
        m = np.zeros((cv.S, cv.S), bool)
        m[rows_, cols] = band > 0.4
        out.append((side if len(spec.sides) > 1 else "", m))
    return out


def _bezier(p0, p1, p2, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t**2 * np.array(p2)
    return pts[:, 0], pts[:, 1]


def _draw(cv: Canvas, xs: np.ndarray, ys: np.ndarray, value: float, width: int, target: np.ndarray) -> None:
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


def paint_devices(cv: Canvas, spec: FindingSpec, rng: np.random.Generator) -> Parts:
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
            hx, hy, _, _, hw, _ = heart_geometry(a)
            for end in ((a.cx - 0.01, hy - 0.04), (hx + 0.3 * hw, hy + 0.03)):
                xs, ys = _bezier((gx, gy), (a.cx + 0.04, a.apex + 0.12), end, n)
                _draw(cv, xs, ys, 0.5, width, layer)
        np.maximum(cv.devices, layer, out=cv.devices)
        cv.has_devices = True
        out.append((device, _dilate(layer > 0, max(1, S // 128))))
    return out


def reshape_cardiomegaly(a: Anatomy, spec: FindingSpec, rng: np.random.Generator) -> None:
    """A cardiothoracic ratio above one half (a little more on AP: magnification)."""
    a.ctr = param("Cardiomegaly", "extent", spec) * rng.uniform(0.99, 1.03) * (1.04 if a.view == "AP" else 1.0)


def reshape_mediastinum(a: Anatomy, spec: FindingSpec, rng: np.random.Generator) -> None:
    a.mw = param("Enlarged Cardiomediastinum", "extent", spec) * rng.uniform(0.97, 1.05)


# Painted in kdistill.labels.FINDINGS order; "No Finding" has no painter.
PAINTERS: dict[str, Painter] = {
    "Atelectasis": paint_atelectasis,
    "Cardiomegaly": paint_cardiomegaly,
    "Consolidation": paint_consolidation,
    "Edema": paint_edema,
    "Enlarged Cardiomediastinum": paint_mediastinum,
    "Fracture": paint_fracture,
    "Lung Lesion": paint_nodule,
    "Lung Opacity": paint_lung_opacity,
    "Pleural Effusion": paint_effusion,
    "Pleural Other": paint_pleural_thickening,
    "Pneumonia": paint_pneumonia,
    "Pneumothorax": paint_pneumothorax,
    "Support Devices": paint_devices,
}
RESHAPERS: dict[str, Reshaper] = {
    "Cardiomegaly": reshape_cardiomegaly,
    "Enlarged Cardiomediastinum": reshape_mediastinum,
}
