"""A simplified left-lateral view, the second image of a PA study in MIMIC-CXR.

Patient facing the image's left: sternum and heart anterior (left), spine posterior (right),
one superimposed lung field, the hemidiaphragms and the posterior costophrenic sulcus.  Only
findings with a clear lateral sign are drawn (effusion in the posterior sulcus, cardiomegaly,
lower-lobe airspace disease, perihilar edema, nodules, tubes).  Laterals carry no expert
regions: rois.jsonl describes the frontal image, as the EGL experiments use frontal views.
"""
from __future__ import annotations

import numpy as np

from kdistill.data.phantom.anatomy import gauss_cols, grid
from kdistill.data.phantom.painters import param
from kdistill.data.phantom.shortcut import draw_marker
from kdistill.data.phantom.spec import FindingSpec


def render_lateral(
    findings: dict[str, FindingSpec] | None = None,
    *,
    size: int = 256,
    difficulty: float = 0.5,
    seed: int = 0,
    patient_seed: int | None = None,
    shortcut: bool = False,
) -> np.ndarray:
    """uint8 SxS lateral image for the same study as ``render_study`` with the same arguments."""
    findings = findings or {}
    g = grid(size)
    S = size
    x, y = g.x, g.y
    prng = np.random.default_rng([seed if patient_seed is None else patient_seed, 7])
    apex, base = prng.uniform(0.12, 0.16), prng.uniform(0.72, 0.77)
    front, back = prng.uniform(0.24, 0.29), prng.uniform(0.72, 0.77)
    c = 1.6 - 1.3 * difficulty
    edge = max(1.0, 1.2 * S / 256)

    # One superimposed lung field: a rounded box, its floor the domes (lowest posteriorly).
    mid, half = 0.5 * (front + back), 0.5 * (back - front)
    u = (x - mid) / half
    v = (y - base) / (base - apex)
    r = u**4 + v * v
    dome = base - 0.05 * (1 - np.clip(u, -1, 1) ** 2) + 0.04 * np.clip(u, 0, 1)  # deep posterior sulcus
    lung = np.clip(0.5 + np.minimum((1 - r) * (half * S / 4), (dome - y) * S) / edge, 0, 1)

    cardio = findings.get("Cardiomegaly")
    grow = 1.0 if cardio is None else param("Cardiomegaly", "extent", cardio) / 0.45
    hx, hy = front + 0.11 * grow, base - 0.08
    heart = np.clip(1 - ((x - hx) / (0.12 * grow)) ** 2 - ((y - hy) / 0.13) ** 2, 0, 1)
    lung *= 1 - np.clip(heart * 4, 0, 1)

    body = np.clip(0.5 + (0.5 - np.abs(x - 0.5 - 0.02)) * S / (3 * edge) - 0.08 * S / (3 * edge), 0, 1)
    spine = gauss_cols(x, back + 0.04, 0.035, 4) * (0.8 + 0.2 * np.cos(y * (2 * np.pi / 0.04)))
    sternum = gauss_cols(x, front - 0.015, 0.008) * np.clip((base - y) * 8, 0, 1)
    att = 0.62 * body + 0.10 * spine + 0.08 * sternum - 0.36 * lung

    delta = np.zeros((S, S), np.float32)
    rng = np.random.default_rng([seed, 8])
    if "Pleural Effusion" in findings:
        spec = findings["Pleural Effusion"]
        level = base + 0.04 - param("Pleural Effusion", "extent", spec) * (base - apex) * 1.1 - 0.06 * np.clip(u, 0, 1) ** 2
        delta += param("Pleural Effusion", "density") * c * np.clip((y - level) * S / (2.5 * edge), 0, 1) * lung
    for name in ("Consolidation", "Pneumonia", "Lung Opacity"):
        if name in findings:
            spec = findings[name]
            yc = {"upper": apex + 0.15, "middle": 0.5 * (apex + base), "lower": base - 0.1}[spec.zone or "lower"]
            xc = back - 0.12 if (spec.zone or "lower") == "lower" else mid
            s = 0.06 + param(name, "extent", spec)
            delta += 0.8 * param(name, "density") * c * gauss_cols(x, xc, s, 4) * gauss_cols(y, yc, s, 4) * lung
    if "Edema" in findings:
        spec = findings["Edema"]
        delta += param("Edema", "density", spec) * c * gauss_cols(x, mid, 0.12) * gauss_cols(y, 0.47, 0.14) * lung
    if "Lung Lesion" in findings:
        spec = findings["Lung Lesion"]
        rad = param("Lung Lesion", "extent", spec)
        xc, yc = rng.uniform(mid - 0.1, mid + 0.1), rng.uniform(apex + 0.15, base - 0.15)
        dist = np.sqrt((x - xc) ** 2 + (y - yc) ** 2) * S
        delta += param("Lung Lesion", "density") * c * np.clip(rad * S - dist + 0.5, 0, 1)
    if "Support Devices" in findings:
        for off in (-0.006, 0.006):  # every device enters from above; a tube in the airway shows best
            col = min(S - 1, max(0, int((mid - 0.05 + off) * S)))
            delta[: int((apex + 0.2) * S), col] += 0.35
    att += delta

    noise_rng = np.random.default_rng([seed, 9])
    img = att * prng.uniform(0.85, 1.1) + 0.08 + prng.normal(0, 0.03)
    img += g.basis_low @ noise_rng.normal(0, 0.035, (6, 6)).astype(np.float32) @ g.basis_low.T
    oy, ox = noise_rng.integers(0, S, 2)
    img += g.noise[oy : oy + S, ox : ox + S] * np.float32(0.01 + 0.06 * difficulty)
    if shortcut:
        draw_marker(img)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
