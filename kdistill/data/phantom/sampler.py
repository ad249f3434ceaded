"""Draws the study plans: subjects, splits, views and which findings each study shows.

Presence follows a small Bayesian-network-like model read from findings.yaml: a share of
normal studies, then each pathology in ``sampling_order`` with a logit raised by the findings it
is associated with (edema after cardiomegaly, consolidation after pneumonia, ...).  The base
logits are calibrated by simulation so the *label* prevalence (present and not hedged) lands on
the MIMIC-CXR-like targets of findings.yaml.

Per study it also decides whether the shortcut marker is drawn (``_place_marker``: strength per
split, ``PhantomConfig.shortcut_strengths``) and whether a train study keeps its regions
(``rois_fraction``), each from a stream that moves nothing else (see ``spec.STREAM_*``).
"""
from __future__ import annotations

import numpy as np

from kdistill.labels import FINDING_INDEX, FINDINGS
from kdistill.data.phantom.config import SPLITS, PhantomConfig
from kdistill.data.phantom.knowledge import Knowledge
from kdistill.data.phantom.shortcut import marker_probability
from kdistill.data.phantom.spec import STREAM_ROIS, STREAM_SHORTCUT, FindingSpec, StudyPlan

PATHOLOGIES = tuple(f for f in FINDINGS if f not in ("No Finding", "Support Devices"))
ZONED = ("Consolidation", "Pneumonia", "Lung Opacity", "Lung Lesion")
DEVICES = {"ett": 0.45, "cvc": 0.55, "ngt": 0.35, "pacer": 0.2}
_CALIBRATION_ROWS = 20000


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


def _draw_presence(know: Knowledge, base: dict[str, float], rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 14) bool: which findings each study shows.  Abnormal studies have >= 1 pathology."""
    x = np.zeros((n, len(FINDINGS)), dtype=bool)
    normal = rng.random(n) < know.normal_share
    pathology_cols = [FINDING_INDEX[f] for f in PATHOLOGIES]
    todo = ~normal
    for _ in range(100):  # redraw abnormal studies that came out empty
        rows = np.flatnonzero(todo)
        if rows.size == 0:
            break
        sub = np.zeros((rows.size, len(FINDINGS)), dtype=bool)
        for name in know.sampling_order:
            if name == "Support Devices":
                continue
            z = np.full(rows.size, base[name])
            for other, boost in know[name].associated.items():
                z += boost * sub[:, FINDING_INDEX[other]]
            sub[:, FINDING_INDEX[name]] = rng.random(rows.size) < _sigmoid(z)
        x[rows] = sub
        todo = ~normal & ~x[:, pathology_cols].any(axis=1)
    dev = "Support Devices"
    z = np.full(n, base[dev]) + know.normal_device_logit * normal
    for other, boost in know[dev].associated.items():
        z += boost * x[:, FINDING_INDEX[other]]
    x[:, FINDING_INDEX[dev]] = rng.random(n) < _sigmoid(z)
    x[:, FINDING_INDEX["No Finding"]] = ~x[:, pathology_cols].any(axis=1)
    return x


def presence_targets(know: Knowledge) -> dict[str, float]:
    """Share of studies that must *show* each finding so that, after hedging, the label-1 share
    matches the prevalence of findings.yaml."""
    return {f: know[f].prevalence / max(1e-6, 1.0 - know[f].hedge_rate) for f in know.sampling_order}


_LOGIT_CACHE: dict[tuple, dict[str, float]] = {}


def calibrated_logits(know: Knowledge) -> dict[str, float]:
    """Base logits per finding (deterministic; cached per set of statistics)."""
    key = (know.normal_share, know.normal_device_logit) + tuple(
        (f, know[f].prevalence, know[f].hedge_rate, tuple(sorted(know[f].associated.items())))
        for f in know.sampling_order
    )
    if key not in _LOGIT_CACHE:
        _LOGIT_CACHE[key] = _calibrate(know)
    return dict(_LOGIT_CACHE[key])


def _calibrate(know: Knowledge) -> dict[str, float]:
    targets = presence_targets(know)
    base = {f: _logit(t) for f, t in targets.items()}
    for _ in range(30):
        # Common random numbers: the same draws every iteration, so the fixed point is smooth.
        x = _draw_presence(know, base, np.random.default_rng(20240601), _CALIBRATION_ROWS)
        for f, t in targets.items():
            got = x[:, FINDING_INDEX[f]].mean()
            base[f] += 0.8 * (_logit(t) - _logit(got))
    return base


def _choice(rng: np.random.Generator, probs: dict[str, float]) -> str:
    """One key of ``probs`` drawn by weight (a plain loop: far cheaper than rng.choice here)."""
    r = rng.random() * sum(probs.values())
    key = ""
    for key, p in probs.items():
        r -= p
        if r < 0:
            break
    return key


def _finding_specs(row: np.ndarray, know: Knowledge, cfg: PhantomConfig, rng: np.random.Generator) -> dict[str, FindingSpec]:
    names = [f for f in FINDINGS if row[FINDING_INDEX[f]] and f != "No Finding"]
    specs: dict[str, FindingSpec] = {}
    for name in names:
        info = know[name]
        spec = FindingSpec(laterality=_choice(rng, info.lateralities))
        if info.severities:
            spec.severity = _choice(rng, info.severities)
        if name in ZONED:
            spec.zone = "lower" if spec.laterality == "bilateral" else _choice(rng, {"lower": 0.6, "middle": 0.2, "upper": 0.2})
        spec.hedged = bool(rng.random() < info.hedge_rate)
        if spec.hedged and spec.severity and rng.random() < 0.7:
            spec.severity = "small"  # what a radiologist hedges on is mostly subtle
        spec.omitted = bool(rng.random() < cfg.label_noise)
        specs[name] = spec
    # Findings that travel together share a side and a zone.
    lead = specs.get("Pneumonia")
    for follower in ("Consolidation", "Lung Opacity"):
        if lead and follower in specs:
            specs[follower].laterality = lead.laterality
            specs[follower].zone = lead.zone
    if "Edema" in specs and "Pleural Effusion" in specs and rng.random() < 0.7:
        specs["Pleural Effusion"].laterality = "bilateral"
    if "Pleural Effusion" in specs and "Atelectasis" in specs and rng.random() < 0.7:
        specs["Atelectasis"].laterality = specs["Pleural Effusion"].laterality
    if "Fracture" in specs and "Pneumothorax" in specs:
        specs["Fracture"].laterality = specs["Pneumothorax"].laterality
    if "Fracture" in specs:
        specs["Fracture"].extra["rib"] = int(rng.integers(4, 9))
    if "Support Devices" in specs:
        devices = [d for d, p in DEVICES.items() if rng.random() < p] or ["ett"]
        specs["Support Devices"].extra["devices"] = devices
        specs["Support Devices"].extra["cm"] = int(rng.integers(2, 6))
        specs["Support Devices"].extra["cvc_side"] = "right" if rng.random() < 0.75 else "left"
    return specs


def _unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < n:
        for v in rng.integers(low, high, size=max(8, 2 * (n - len(out)))).tolist():
            if v not in seen and len(out) < n:
                seen.add(v)
                out.append(v)
    return out


def _dicom_id(rng: np.random.Generator) -> str:
    h = rng.bytes(20).hex()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def label_positive(spec: FindingSpec) -> bool:
    """The report will state this finding as present (label 1)."""
    return not spec.hedged and not spec.omitted


def label_mentioned(spec: FindingSpec) -> bool:
    """The report will mention this finding as present or possible (label 1 or -1)."""
    return not spec.omitted


def shortcut_positive(name: str, specs: dict[str, FindingSpec]) -> bool:
    """The study's label for the shortcut finding is 1 in its default-style report (No Finding:
    no pathology mentioned); report_style's omissions do not count."""
    if name == "No Finding":
        return not any(label_mentioned(v) for f, v in specs.items() if f in PATHOLOGIES)
    spec = specs.get(name)
    return spec is not None and label_positive(spec)


def _place_marker(plan: StudyPlan, cfg: PhantomConfig, rng: np.random.Generator) -> None:
    """Decide ``plan.shortcut``.  A train study's draw comes from the sampler's stream ``rng``
    whenever a shortcut finding is set (whatever the train strength, even none), as it always
    has: so the phantoms of one seed with a shortcut finding differ only in their markers, and
    the train-only phantom of ``shortcut_strength`` is the one it always was.  Other splits draw
    from the study's own stream."""
    plan.shortcut_positive = shortcut_positive(cfg.shortcut_finding, plan.findings)
    if plan.split == "train":
        u = rng.random()
    else:
        u = np.random.default_rng([plan.seed, STREAM_SHORTCUT]).random()
    strength = cfg.shortcut_strengths().get(plan.split)
    if strength is not None:
        plan.shortcut = bool(u < marker_probability(strength, plan.shortcut_positive))


def plan_studies(cfg: PhantomConfig, know: Knowledge) -> list[StudyPlan]:
    rng = np.random.default_rng([cfg.seed, 1])
    n = cfg.n_studies
    # Subjects with 1+ studies each; the split is by subject, so no subject spans two splits.
    per_subject: list[int] = []
    while sum(per_subject) < n:
        per_subject.append(1 + int(rng.poisson(cfg.studies_per_subject - 1.0)))
    per_subject[-1] -= sum(per_subject) - n
    n_subjects = len(per_subject)
    subject_ids = sorted(_unique_ids(rng, n_subjects, 10_000_000, 20_000_000))
    study_ids = _unique_ids(rng, n, 50_000_000, 60_000_000)
    # Subjects in random order fill train, then validate, then test up to their share of studies,
    # so the split is close to the asked fractions even for a few hundred studies.
    fractions = np.asarray(cfg.split_fractions, dtype=float)
    bounds = np.cumsum(fractions / fractions.sum()) * n
    split_of = np.zeros(n_subjects, dtype=int)
    filled = 0
    for s in rng.permutation(n_subjects):
        split_of[s] = min(2, int(np.searchsorted(bounds, filled + 0.5 * per_subject[s], side="right")))
        filled += per_subject[s]
    presence = _draw_presence(know, calibrated_logits(know), rng, n)
    order = rng.permutation(n)  # which presence row goes to which study, so subjects mix
    plans: list[StudyPlan] = []
    k = 0
    for s, count in enumerate(per_subject):
        subject = str(subject_ids[s])
        patient_seed = int(rng.integers(2**31))
        sex = "woman" if rng.random() < 0.5 else "man"
        date = 2110_00_00 + int(rng.integers(0, 80)) * 10000 + 101
        for j in range(count):
            row = presence[order[k]]
            specs = _finding_specs(row, know, cfg, rng)
            sick = any(f in specs for f in ("Support Devices", "Edema"))
            if set(cfg.views) == {"PA", "AP"}:
                view = "AP" if rng.random() < (0.8 if sick else 0.35) else "PA"
            else:
                view = cfg.views[0]
            date_j = date + min(j, 11) * 100 + int(rng.integers(0, 27))  # later studies, later months
            seconds = int(rng.integers(0, 86400))
            time = f"{seconds // 3600}{(seconds // 60) % 60:02d}{seconds % 60:02d}.{int(rng.integers(0, 1000)):03d}"
            plan = StudyPlan(
                index=k,
                subject_id=subject,
                study_id=str(study_ids[k]),
                dicom_id=_dicom_id(rng),
                split=SPLITS[int(split_of[s])],
                view=view,
                study_date=date_j,
                study_time=time.lstrip("0") or "0",
                sex=sex,
                patient_seed=patient_seed,
                seed=int(rng.integers(2**31)),
                findings=specs,
            )
            if cfg.lateral_share > 0 and view == "PA" and rng.random() < cfg.lateral_share:
                plan.lateral_dicom_id = _dicom_id(rng)
            if cfg.shortcut_finding:
                _place_marker(plan, cfg, rng)
            if cfg.rois_fraction < 1.0 and plan.split == "train":
                plan.keep_rois = bool(np.random.default_rng([plan.seed, STREAM_ROIS]).random() < cfg.rois_fraction)
            plans.append(plan)
            k += 1
    return plans


def finding_set_drawer(know: Knowledge, cfg: PhantomConfig, rare_boost: float = 0.2):
    """A function ``draw(rng) -> {name: FindingSpec}`` drawing finding sets with the studies'
    statistics, hedged ones included (for the corpus's rationale documents; nothing omitted).
    A ``rare_boost`` share of the sets gets one more pathology drawn uniformly: at the studies'
    prevalence a finding seen in 2% of studies gets too few documents for the teacher to learn
    to write it (Pleural Other was the finding the demo teacher missed most)."""
    base = calibrated_logits(know)
    clean = PhantomConfig(label_noise=0.0)
    batch: list[np.ndarray] = []
    pathology_cols = [FINDING_INDEX[f] for f in PATHOLOGIES]

    def draw(rng: np.random.Generator) -> dict[str, FindingSpec]:
        if not batch:
            batch.extend(_draw_presence(know, base, rng, 2048))
        row = batch.pop()
        if rng.random() < rare_boost:
            row = row.copy()
            row[pathology_cols[int(rng.integers(len(pathology_cols)))]] = True
        specs = _finding_specs(row, know, clean, rng)
        for spec in specs.values():
            spec.omitted = False
        return specs

    return draw
