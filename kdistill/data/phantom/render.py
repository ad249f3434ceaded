"""Draws a radiograph-like frontal chest image, and the exact region of every finding it shows.

``render_study`` composes the parts: the anatomy (``anatomy.py``: grid, patient, lungs, heart,
ribs, clavicles, vessel markings), then the findings, each by its painter from
``painters.PAINTERS`` in ``kdistill.labels.FINDINGS`` order, then the attenuation map (air dark,
soft tissue grey, bone bright), a per-patient window, a smooth intensity field, noise, the
shortcut marker (``shortcut.py``) and the 8-bit image.  A 256x256 study takes a few
milliseconds.

Every component draws its random numbers from its own stream (anatomy per patient, each
finding per study), so removing a finding from a study leaves the rest of the image
bit-identical; tests use this to check that a finding's region is where the image changed.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kdistill.labels import FINDINGS, FINDING_INDEX
from kdistill.data.phantom.anatomy import (
    Canvas, draw_clavicles, draw_heart, draw_lungs, draw_markings, draw_ribs, gauss_cols, grid, patient_anatomy,
)
from kdistill.data.phantom.knowledge import load_knowledge
from kdistill.data.phantom.painters import PAINTERS, RESHAPERS
from kdistill.data.phantom.shortcut import draw_marker
from kdistill.data.phantom.spec import FindingSpec


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


def _finding_rng(seed: int, name: str) -> np.random.Generator:
    """A finding's own stream; a new generator per use, so reshaping and painting draw alike."""
    return np.random.default_rng([seed, 100 + FINDING_INDEX[name]])


def _body(cv: Canvas, heart: np.ndarray) -> np.ndarray:
    """Soft tissue: the body outline (thickest mid-line), spine, heart and hilar vessels."""
    a, g, S = cv.a, cv.g, cv.S
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
        att[r0:r1, cv.cols(side)] += 0.10 * gauss_cols(cv.xs(side), hx, 0.035) * gauss_cols(y[r0:r1], hy, 0.06) * cv.lung[r0:r1, cv.cols(side)]
    return att


def _lung_fields(cv: Canvas, att: np.ndarray) -> None:
    """Subtract the air of the lungs (with vessel markings) and add the ribs, in place.
    Consumes ``cv.markings`` as a buffer: nothing reads it after this."""
    a, g = cv.a, cv.g
    # Air depth: thickest lung mid-field; apices (shoulder girdle) and bases (soft tissue) are greyer.
    depth_rows = 0.30 + 0.10 * gauss_cols(g.y, a.apex + 0.45 * cv.height("left"), 0.3)
    depth_cols = 0.9 + 0.1 * gauss_cols(g.x, a.cx, 0.25)
    rows = cv.rows  # lungs and ribs live in these rows only
    air = cv.markings[rows]
    air *= -0.22
    if cv.marking_gain is not None:
        air *= cv.marking_gain[rows]
    air += depth_rows[rows] * depth_cols
    air *= cv.lung[rows]
    att[rows] -= air
    bone = cv.ribs[rows]
    bone *= 0.10
    att[rows] += bone


def _breasts(cv: Canvas, att: np.ndarray, patient_seed: int) -> None:
    """Breast shadows grey the lower lateral lung fields."""
    a, S, y = cv.a, cv.S, cv.g.y
    amp = np.random.default_rng([patient_seed, 5]).uniform(0.03, 0.07)
    for side in ("right", "left"):
        cols = cv.cols(side)
        yb = a.base[side] - 0.1
        r0 = max(0, cv.px(yb - 0.25))
        xc = cv.x_at(side, 0.75)
        edge = yb + 0.07 - 0.12 * ((cv.xs(side) - xc) / 0.2) ** 2  # rounded lower contour
        soft = gauss_cols(cv.xs(side), xc, 0.22, 4) * np.clip((edge - y[r0:]) * S / 3, 0, 1) * gauss_cols(y[r0:], yb, 0.14)
        att[r0:, cols] += amp * soft


def _overlays(cv: Canvas, att: np.ndarray, clav: np.ndarray) -> None:
    """Clavicles, the findings, devices, the tracheal and gastric air, scapulae on AP."""
    a, S, x, y = cv.a, cv.S, cv.g.x, cv.g.y
    att[cv.clav_rows] += clav
    att += cv.delta
    if cv.has_devices:
        att += cv.devices
    trachea_rows = slice(0, cv.px(a.apex + 0.3 * cv.height("right")))
    att[trachea_rows] -= 0.09 * gauss_cols(x, a.cx, 0.016, 4)
    bubble_r0 = cv.px(a.base["left"] + 0.01)
    att[bubble_r0:] -= 0.12 * gauss_cols(x, a.cx + 0.16, 0.05, 4) * gauss_cols(y[bubble_r0:], a.base["left"] + 0.06, 0.03, 4)
    if a.view == "AP":  # scapulae project over the upper lateral lungs
        r1 = min(S, cv.px(a.apex + 0.4))
        for sgn in (-1, 1):
            att[:r1] += 0.06 * gauss_cols(x, a.cx + sgn * (a.tw - 0.02), 0.05, 4) * gauss_cols(y[:r1], a.apex + 0.16, 0.12, 4)


def _expose(cv: Canvas, att: np.ndarray, seed: int, difficulty: float, shortcut: bool) -> np.ndarray:
    """Window, smooth intensity field, mottle and grain, the marker, then 8 bits (in place on ``att``)."""
    a, g, S = cv.a, cv.g, cv.S
    noise_rng = np.random.default_rng([seed, 3])
    img = att
    img *= a.gain
    img += g.basis_low @ noise_rng.normal(0, 0.035, (6, 6)).astype(np.float32) @ g.basis_low.T
    img += a.offset + 0.08
    oy, ox, my, mx = noise_rng.integers(0, S, 4)
    mottle = g.texture[my : my + S, mx : mx + S]
    img += mottle * np.float32(0.008 + 0.02 * difficulty)
    sigma = (0.01 + 0.06 * difficulty) * (1.25 if a.view == "AP" else 1.0)
    grain = g.noise[oy : oy + S, ox : ox + S]
    img += (grain if noise_rng.random() < 0.5 else grain.T) * np.float32(sigma)
    if shortcut:
        draw_marker(img)
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    return img.astype(np.uint8)


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
    ``shortcut`` draws the corner marker (``shortcut.marker_box``)."""
    findings = findings or {}
    _check(findings)
    if view not in ("PA", "AP"):
        raise ValueError(f"view {view!r}: render_study draws frontal views, 'PA' or 'AP' (laterals: render_lateral)")
    pseed = seed if patient_seed is None else patient_seed
    anatomy = patient_anatomy(np.random.default_rng([pseed, 0]), np.random.default_rng([seed, 1]), view)
    for name, reshape in RESHAPERS.items():
        if name in findings:
            reshape(anatomy, findings[name], _finding_rng(seed, name))
    contrast = 1.6 - 1.3 * difficulty  # finding contrast: 1.6 (obvious) .. 0.3 (faint)
    cv = Canvas(grid(size), anatomy, contrast)
    heart, cv.heart_mask = draw_heart(cv)
    draw_lungs(cv, heart)
    draw_ribs(cv)
    clav = draw_clavicles(cv)
    cv.markings = draw_markings(cv, np.random.default_rng([seed, 2]))

    regions: list[RenderedRegion] = []
    for name in FINDINGS:
        if name in findings and name in PAINTERS:
            parts = PAINTERS[name](cv, findings[name], _finding_rng(seed, name))
            regions.extend(RenderedRegion(name, part, mask) for part, mask in parts if mask.any())

    # Compose the attenuation map (in place: this runs once per study on SxS float32 arrays).
    att = _body(cv, heart)
    _lung_fields(cv, att)
    if sex == "woman":
        _breasts(cv, att, pseed)
    _overlays(cv, att, clav)
    image = _expose(cv, att, seed, difficulty, shortcut)
    a, S = anatomy, size
    thorax = (max(0, cv.px(a.cx - a.tw)), min(S, cv.px(a.cx + a.tw)))
    return RenderResult(image=image, regions=regions, heart_mask=cv.heart_mask, thorax=thorax)
