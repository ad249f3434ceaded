"""The teacher's biomedical text corpus (``corpus/corpus.jsonl``), written from findings.yaml.

Two kinds of document:

* ``textbook``: paragraphs on one finding (location, signs, causes, differentials, grading)
  or on telling two findings apart;
* ``rationale``: a canonical rationale for a finding set with attributes, i.e. which signs
  are seen, why they support the findings, and a conclusion naming every finding by its
  clinical name.  A rationale never names a finding outside its set except in a plain
  negation ("No pneumothorax."), so a rule-based labeler reading teacher output trained on it
  can check consistency.  Normal studies conclude "no acute cardiopulmonary process".

With ``cause_share`` > 0 (the report_style regime: reports that name a cause in place of its
findings) a third kind of paragraph joins the textbook docs: one cause or syndrome of
findings.yaml (``syndromes:``), why it brings its findings, their signs, and that a report
naming the cause implies them, so a teacher that read the corpus can recover the findings a
report leaves to its cause.  Such a doc is ``{"kind": "textbook", "cause": <name>, "findings":
[<requires + brings>], ...}``; its draws come from a stream of their own, so the other docs are
the default corpus's, in order, with cause docs in between.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from kdistill.config import write_text_atomic
from kdistill.labels import FINDINGS
from kdistill.data.phantom.knowledge import Knowledge, SyndromeInfo
from kdistill.data.phantom.spec import FindingSpec

# Words that name a finding; a rationale fragment naming a finding outside its set is dropped.
_EXTRA_TERMS = {
    "Atelectasis": ["atelecta"],
    "Cardiomegaly": ["cardiomegaly", "enlarged heart", "heart is", "heart size", "cardiac silhouette"],
    "Consolidation": ["consolidat"],
    "Edema": ["edema", "kerley"],
    "Enlarged Cardiomediastinum": ["mediastin"],
    "Fracture": ["fracture"],
    "Lung Lesion": ["nodul", "mass", "lesion"],
    "Lung Opacity": ["opacit"],
    "Pleural Effusion": ["effusion", "meniscus"],
    "Pleural Other": ["pleural thickening", "pleural plaque", "pleural cap"],
    "Pneumonia": ["pneumonia", "infection", "infectious"],
    "Pneumothorax": ["pneumothora", "pleural line"],
    "Support Devices": ["tube", "catheter", "central line", "pacemaker", "device"],
}


def _term_patterns(know: Knowledge) -> dict[str, re.Pattern]:
    out = {}
    for name in FINDINGS:
        if name == "No Finding":
            continue
        terms = set(_EXTRA_TERMS.get(name, [])) | {n.lower() for n in know[name].names}
        out[name] = re.compile(r"\b(" + "|".join(re.escape(t) for t in sorted(terms)) + r")", re.I)
    return out


_LOCATION = {"left": "left", "right": "right", "bilateral": "bilateral"}
_SIGN_OPENERS = [
    "{where}there {be} {sign}.",
    "{where}the radiograph shows {sign}.",
    "{Where}{sign} {be} seen.",
    "We see {sign}{where_tail}.",
    "{where}{sign} {be} evident.",
]
_DEVICE_NAMES = {"ett": "an endotracheal tube", "cvc": "a central venous catheter", "ngt": "a nasogastric tube",
                 "pacer": "a pacemaker with its leads"}
_LINKS = [
    "These signs support {desc}.",
    "This pattern indicates {desc}.",
    "Taken together, the appearance is consistent with {desc}.",
    "This is the typical appearance of {desc}.",
    "These features establish {desc}.",
]
# A hedged finding (the study's label -1): the same signs, a conclusion the labeler reads as uncertain.
_HEDGED_LINKS = [
    "These signs suggest possible {desc}.",
    "This pattern may represent {desc}.",
    "The appearance is suggestive of {desc}.",
]
_NORMAL = [
    "The lungs are clear and well expanded, the heart size is normal, the mediastinal contours are normal and the costophrenic angles are sharp. There is no acute cardiopulmonary process.",
    "Both lungs are clear. The cardiac silhouette is of normal size and the hemidiaphragms are well defined. The costophrenic angles are sharp. Conclusion: no acute cardiopulmonary process.",
    "Lung volumes are normal and the lungs are clear. Heart size is normal. No pleural effusion or pneumothorax is seen. Impression: no acute cardiopulmonary abnormality.",
    "The lung fields are clear with normal vascular markings. The heart and mediastinum are normal in size. The bony thorax is intact. This is a normal chest radiograph with no acute cardiopulmonary process.",
]


def _cap(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


def _describe(name: str, spec: FindingSpec, know: Knowledge, rng: np.random.Generator) -> str:
    """'a small left pleural effusion', 'moderate cardiomegaly', 'support devices'."""
    info = know[name]
    words = []
    if spec.severity and info.severity_words.get(spec.severity):
        words.append(info.severity_words[spec.severity][int(rng.integers(len(info.severity_words[spec.severity])))])
    if spec.laterality in _LOCATION:
        words.append(_LOCATION[spec.laterality])
    label_name = info.canonical
    if name == "Enlarged Cardiomediastinum":
        label_name += " (enlarged cardiomediastinum)"
    elif name == "Lung Lesion":
        label_name += " (lung lesion)"
    return " ".join(words + [label_name])


def _rationale(findings: dict[str, FindingSpec], know: Knowledge, rng: np.random.Generator, patterns) -> str:
    present = set(findings)

    def allowed(text: str) -> bool:
        return all(pat.search(text) is None for n, pat in patterns.items() if n not in present)

    if not [n for n in findings if n != "Support Devices"]:
        parts = [_NORMAL[int(rng.integers(len(_NORMAL)))]]
        if findings:
            parts.insert(0, "Support devices are in place: lines and tubes project over the chest.")
        return " ".join(parts)
    parts: list[str] = []
    # In the prompt's order (FINDINGS order): a teacher then walks down its findings line one
    # finding at a time instead of tracking which ones it has covered.
    names = sorted(findings, key=FINDINGS.index)
    descs = {n: _describe(n, findings[n], know, rng) for n in names}  # one wording per finding per document
    for name in names:
        spec, info = findings[name], know[name]
        if name == "Support Devices":  # name the devices actually in place
            devices = [_DEVICE_NAMES[d] for d in spec.extra.get("devices", ["ett"]) if d in _DEVICE_NAMES]
            listed = devices[0] if len(devices) == 1 else ", ".join(devices[:-1]) + " and " + devices[-1]
            parts.append(_cap(f"{listed} {'projects' if len(devices) == 1 else 'project'} over the chest."))
            parts.append("These are support devices in expected position.")
            continue
        signs = [s for s in info.signs if allowed(s)]
        if not signs:
            signs = [f"the appearance of {info.canonical}"]
        k = int(rng.integers(1, min(3, len(signs)) + 1))
        chosen = [signs[i] for i in rng.choice(len(signs), size=k, replace=False)]
        sign = chosen[0] if k == 1 else ", ".join(chosen[:-1]) + " and " + chosen[-1]
        where = "" if spec.laterality not in ("left", "right", "bilateral") else (
            "on both sides " if spec.laterality == "bilateral" else f"on the {spec.laterality} ")
        opener = _SIGN_OPENERS[int(rng.integers(len(_SIGN_OPENERS)))]
        if "{Where}" in opener:
            text = (f"{where.strip().capitalize()}, " if where else "") + opener.replace("{Where}", "")
        else:
            text = opener
        text = text.format(where=(f"{where.strip()}, " if where else ""), sign=sign, be="is" if k == 1 else "are",
                           where_tail=(f" {where.strip()}" if where else ""))
        parts.append(_cap(text))
        links = _HEDGED_LINKS if spec.hedged else _LINKS
        parts.append(links[int(rng.integers(len(links)))].format(desc=descs[name]))
        extra = info.associated_text
        if extra and allowed(extra) and rng.random() < 0.5:
            parts.append(extra)
        # No causes here (they stay in the textbook docs): a rationale argues from signs to the
        # finding, and causes such as "congestive heart failure" or "hemothorax" read as other
        # findings to a CheXpert-style labeler, so a teacher that learns them writes inconsistent rationales.
    absent = [n for n in ("Pneumothorax", "Pleural Effusion", "Consolidation") if n not in present]
    if absent and rng.random() < 0.5:
        n = absent[int(rng.integers(len(absent)))]
        parts.append(f"No {know[n].canonical} is seen.")
    conclusion = ", ".join(("possible " if findings[n].hedged else "") + descs[n] for n in names)
    parts.append(f"Conclusion: {conclusion}.")
    return " ".join(parts)


_TEXTBOOK = {
    "intro": ["{N} is a radiographic finding located in {loc}.", "{N} involves {loc}.",
              "On chest radiographs, {n} is found in {loc}.", "The usual site of {n} is {loc}."],
    "signs": ["On a frontal chest radiograph, {n} shows as {signs}.", "The radiographic signs of {n} are {signs}.",
              "Radiologists recognise {n} by {signs}.", "Key signs of {n}: {signs}."],
    "causes": ["Common causes of {n} are {items}.", "{N} is most often caused by {items}.",
               "Typical causes of {n} include {items}."],
    "differentials": ["The differential diagnosis of {n} includes {items}.", "{N} must be distinguished from {items}.",
                      "Mimics of {n} include {items}."],
    "grades": ["Radiologists grade {n} as {items}.", "Reports describe the extent of {n} as {items}."],
    "sides": ["It may be {items}, and reports state the side.", "{N} can be {items}; the report names the side."],
    "names": ["Other names for {n} are {items}.", "{N} is also reported as {items}."],
}


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _textbook(name: str, know: Knowledge, rng: np.random.Generator) -> str:
    info = know[name]
    n = info.canonical

    def say(kind: str, **kw) -> str:
        options = _TEXTBOOK[kind]
        return _cap(options[int(rng.integers(len(options)))].format(n=n, N=_cap(n), **kw))

    def some(items) -> list[str]:
        items = list(items)
        k = int(rng.integers(max(1, len(items) - 1), len(items) + 1))
        return [items[i] for i in sorted(rng.choice(len(items), size=k, replace=False))]

    pieces = [say("signs", signs=_join(some(info.signs)))]
    if name == "Support Devices":  # its "causes" are indications
        pieces.append(f"Support devices are placed for {_join(some(info.causes))}.")
    elif info.causes:
        pieces.append(say("causes", items=_join(some(info.causes))))
    if info.differentials:
        pieces.append(say("differentials", items=_join(some(info.differentials))))
    if info.associated_text:
        pieces.append(info.associated_text)
    if info.severity_words:
        pieces.append(say("grades", items=_join([v[0] if v[0] == k else f"{v[0]} ({k})" for k, v in info.severity_words.items()])))
    sides = [s for s in info.lateralities if s != "none"]
    if sides:
        pieces.append(say("sides", items=" or ".join(sides)))
    if len(info.names) > 1:
        pieces.append(say("names", items=_join(list(info.names[1:]))))
    order = rng.permutation(len(pieces))
    return " ".join([say("intro", loc=info.location)] + [pieces[i] for i in order])


def _compare(a: str, b: str, know: Knowledge, rng: np.random.Generator) -> str:
    ia, ib = know[a], know[b]
    sa = ia.signs[int(rng.integers(len(ia.signs)))]
    sb = ib.signs[int(rng.integers(len(ib.signs)))]
    return (f"Distinguishing {ia.canonical} from {ib.canonical}: {ia.canonical} typically shows {sa}, "
            f"whereas {ib.canonical} shows {sb}. {ia.canonical.capitalize()} is found in {ia.location}; "
            f"{ib.canonical} in {ib.location}.")


_CAUSE = {
    "brings": ["On a chest radiograph {cause} brings {findings}.", "The radiographic picture of {cause} is {findings}.",
               "{Cause} shows on chest radiographs as {findings}."],
    "signs": ["Radiologists see {signs}.", "The signs are {signs}.", "Look for {signs}."],
    "implies": ["A report that names {cause} implies {findings}, even where it does not state them.",
                "When a report says findings are consistent with {cause}, the image shows {findings}.",
                "Reports often state {cause} in place of {findings}; the findings are implied by the diagnosis."],
    "requires": ["It is diagnosed when {required} is seen together with them.",
                 "{Required} must be present for the diagnosis."],
}


def _cause_doc(info: SyndromeInfo, know: Knowledge, rng: np.random.Generator) -> dict:
    """A paragraph on one syndrome: what it brings, why, the signs, and what naming it implies."""

    def say(kind: str, **kw) -> str:
        options = _CAUSE[kind]
        cause = info.name
        return _cap(options[int(rng.integers(len(options)))].format(cause=cause, Cause=_cap(cause), **kw))

    findings = _join([know[f].canonical for f in info.brings])
    signs = _join([know[f].signs[int(rng.integers(len(know[f].signs)))] for f in info.brings])
    pieces = [info.explanation, say("brings", findings=findings), say("signs", signs=signs)]
    if info.requires:
        required = _join([know[f].canonical for f in info.requires])
        pieces.append(say("requires", required=required, Required=_cap(required)))
    pieces.append(say("implies", findings=findings))
    names = [f for f in FINDINGS if f in info.brings or f in info.requires]
    return {"kind": "textbook", "text": " ".join(pieces), "findings": names, "attributes": {}, "cause": info.name}


def write_corpus(path: str | Path, know: Knowledge, target_mb: float, seed: int, draw_findings,
                 cause_share: float = 0.0) -> dict[str, int]:
    """Write ``corpus.jsonl`` of about ``target_mb`` MB. ``draw_findings(rng)`` returns one
    finding set (name -> FindingSpec) drawn like the studies'; ``cause_share`` of the docs are
    cause docs (0: none, the default corpus).  Returns counts per kind ("cause": how many of the
    textbook docs are cause docs; only when there are any)."""
    rng = np.random.default_rng([seed, 7])
    cause_rng = np.random.default_rng([seed, 70])
    syndromes = list(know.syndromes.values())
    patterns = _term_patterns(know)
    target = int(target_mb * 1e6)
    lines: list[str] = []
    size = 0
    counts = {"textbook": 0, "rationale": 0}
    topics = [f for f in FINDINGS if f != "No Finding"]
    while size < target:
        if cause_share > 0 and syndromes and cause_rng.random() < cause_share:
            doc = _cause_doc(syndromes[int(cause_rng.integers(len(syndromes)))], know, cause_rng)
            counts["cause"] = counts.get("cause", 0) + 1
        elif rng.random() < 0.25:
            if rng.random() < 0.7:
                name = topics[int(rng.integers(len(topics)))]
                doc = {"kind": "textbook", "text": _textbook(name, know, rng), "findings": [name], "attributes": {}}
            else:
                a, b = rng.choice(len(topics), size=2, replace=False)
                doc = {"kind": "textbook", "text": _compare(topics[a], topics[b], know, rng),
                       "findings": [topics[a], topics[b]], "attributes": {}}
        else:
            findings = draw_findings(rng)
            doc = {
                "kind": "rationale",
                "text": _rationale(findings, know, rng, patterns),
                "findings": [n for n in FINDINGS if n in findings],
                "attributes": {n: {"laterality": s.laterality if s.laterality != "none" else None,
                                   "severity": s.severity, "uncertain": s.hedged} for n, s in findings.items()},
            }
        line = json.dumps(doc, ensure_ascii=False)
        lines.append(line)
        size += len(line) + 1
        counts[doc["kind"]] += 1
    write_text_atomic(path, "\n".join(lines) + ("\n" if lines else ""))
    return counts
