"""Writes a MIMIC-CXR-style free-text report for a study plan, and the CheXpert label row that
follows the report's meaning: 1 stated present, -1 hedged, 0 explicitly negated, NaN not
mentioned.  The labels are a by-product of writing (each sentence knows what it asserts),
so they can never drift from the text.

With an ``ImpliedCause`` (report_style) the report names a cause ("Findings are consistent with
congestive heart failure.") and leaves out the findings it brings; the labels returned are then
the writer's view of that text, and ``synth`` labels the text with the project's labeler
instead, as MIMIC's label file follows its labeler."""
from __future__ import annotations

import dataclasses
import math
import textwrap

import numpy as np

from kdistill.labels import FINDING_INDEX, NUM_FINDINGS
from kdistill.data.phantom.knowledge import Knowledge
from kdistill.data.phantom.spec import FindingSpec, ImpliedCause, StudyPlan

PARENCHYMA = ("Lung Opacity", "Consolidation", "Pneumonia", "Atelectasis", "Edema", "Lung Lesion")
PLEURA = ("Pleural Effusion", "Pneumothorax", "Pleural Other")
HEART = ("Cardiomegaly", "Enlarged Cardiomediastinum")
IMPRESSION_ORDER = (
    "Pneumothorax", "Pneumonia", "Consolidation", "Edema", "Pleural Effusion", "Cardiomegaly",
    "Enlarged Cardiomediastinum", "Lung Lesion", "Lung Opacity", "Atelectasis", "Fracture", "Pleural Other",
)
_ORDINAL = {3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth", 10: "tenth"}
_LOBE = {
    ("right", "upper"): "right upper lobe", ("right", "middle"): "right middle lobe", ("right", "lower"): "right lower lobe",
    ("left", "upper"): "left upper lobe", ("left", "middle"): "lingula", ("left", "lower"): "left lower lobe",
}
_REGION = {"upper": "upper lung", "middle": "mid lung", "lower": "lung base"}


@dataclasses.dataclass
class Report:
    text: str  # the whole file, MIMIC layout
    findings: str
    impression: str
    labels: np.ndarray  # (14,) float32: 1 / 0 / -1 / NaN


def _adverb(word: str) -> str:
    return word + "ly"  # mild -> mildly, moderate -> moderately, marked -> markedly


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


class _Writer:
    def __init__(self, plan: StudyPlan, know: Knowledge, rng: np.random.Generator):
        self.plan, self.know, self.rng = plan, know, rng
        self.bank = know.phrases["findings"]
        self.labels = np.full(NUM_FINDINGS, np.nan, dtype=np.float32)

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def fill(self, template: str, name: str, spec: FindingSpec | None) -> str:
        info = self.know[name]
        sev = ""
        if spec is not None and spec.severity and info.severity_words.get(spec.severity):
            sev = self.pick(info.severity_words[spec.severity])
        side = spec.laterality if spec is not None and spec.laterality in ("left", "right") else ""
        zone = (spec.zone if spec is not None else None) or "lower"
        values = {
            "sev": sev,
            "sevly": _adverb(sev) if sev else "",
            "side": side,
            "lobe": _LOBE.get((side, zone), f"{side} lower lobe"),
            "region": f"{side} {_REGION[zone]}",
            "rib": _ORDINAL.get(int(spec.extra.get("rib", 6)) if spec is not None else 6, "sixth"),
        }
        return _sentence(template.format(**values))

    def bank_key(self, base: str, name: str, spec: FindingSpec) -> str:
        entry = self.bank[name]
        if spec.laterality == "bilateral" and f"{base}_bilateral" in entry:
            return f"{base}_bilateral"
        if spec.severity == "large" and f"{base}_large" in entry:
            return f"{base}_large"
        return base

    def assert_finding(self, name: str, spec: FindingSpec, impression: bool = False) -> str:
        """A sentence stating the finding (present or hedged); records its label."""
        base = ("imp_" if impression else "") + ("unc" if spec.hedged else "pos")
        key = self.bank_key(base, name, spec)
        self.labels[FINDING_INDEX[name]] = -1.0 if spec.hedged else 1.0
        return self.fill(self.pick(self.bank[name][key]), name, spec)

    def devices(self, spec: FindingSpec) -> list[str]:
        self.labels[FINDING_INDEX["Support Devices"]] = 1.0
        bank = self.know.phrases["devices"]
        out = []
        for device in spec.extra.get("devices", ["ett"]):
            text = self.pick(bank[device]["long"]).format(cm=spec.extra.get("cm", 4), side=spec.extra.get("cvc_side", "right"))
            out.append(_sentence(text + "."))
        return out


def write_report(plan: StudyPlan, know: Knowledge, rng: np.random.Generator, implied: ImpliedCause | None = None) -> Report:
    """The report of ``plan``; ``implied``: name a cause and leave out findings it brings (they
    still count as present: they are not negated and do not make the lungs "clear")."""
    w = _Writer(plan, know, rng)
    silent = set(implied.omitted) if implied else set()
    shown = {n: s for n, s in plan.findings.items() if not s.omitted}
    present = set(plan.findings)
    normal = not any(n in shown for n in IMPRESSION_ORDER)
    # Which absent findings the radiologist explicitly negates.
    negated = []
    airspace = {"Consolidation", "Lung Opacity", "Pneumonia"}
    for name in IMPRESSION_ORDER:
        if name in present:
            continue
        if name in airspace and airspace & set(shown):
            continue  # "No focal consolidation." next to a stated pneumonia would read as a contradiction
        p = min(0.95, know[name].negate_rate * (1.7 if normal else 1.0))
        if rng.random() < p:
            negated.append(name)
    negation_sentences: dict[str, list[str]] = {"lungs": [], "pleura": [], "heart": [], "bones": []}
    remaining = list(negated)
    for combo in know.phrases["normal"]["combined_negatives"]:
        names = combo["findings"]
        if all(n in remaining for n in names) and rng.random() < 0.6:
            group = "heart" if names[0] in HEART else "pleura"
            negation_sentences[group].append(combo["text"])
            for n in names:
                remaining.remove(n)
                w.labels[FINDING_INDEX[n]] = 0.0
    for name in remaining:
        group = "lungs" if name in PARENCHYMA else "pleura" if name in PLEURA else "heart" if name in HEART else "bones"
        negation_sentences[group].append(_sentence(w.pick(w.bank[name]["neg"])))
        w.labels[FINDING_INDEX[name]] = 0.0

    sentences: list[str] = []
    if rng.random() < 0.4:  # carries no label
        sentences.append(w.pick(know.phrases["normal"]["openers_pa" if plan.view == "PA" else "openers_ap"]))
    if "Support Devices" in shown:
        sentences += w.devices(shown["Support Devices"])
    lung_findings = [n for n in PARENCHYMA if n in shown]
    if not lung_findings and rng.random() < 0.85:
        sentences.append(w.pick(know.phrases["normal"]["lungs"]))
    sentences += [w.assert_finding(n, shown[n]) for n in lung_findings if n not in silent]
    sentences += negation_sentences["lungs"]
    sentences += [w.assert_finding(n, shown[n]) for n in PLEURA if n in shown and n not in silent]
    sentences += negation_sentences["pleura"]
    sentences += [w.assert_finding(n, shown[n]) for n in HEART if n in shown and n not in silent]
    sentences += negation_sentences["heart"]
    if implied and implied.findings_sentence:
        sentences.append(implied.findings_sentence)
    if "Fracture" in shown and "Fracture" not in silent:
        sentences.append(w.assert_finding("Fracture", shown["Fracture"]))
    sentences += negation_sentences["bones"]
    if "Fracture" not in shown and not negation_sentences["bones"] and rng.random() < 0.4:
        sentences.append(w.pick(know.phrases["normal"]["bones"]))

    impression: list[str] = []
    stated = [n for n in IMPRESSION_ORDER if n in shown]
    if stated:
        for name in [n for n in stated if n not in silent][:4]:
            impression.append(w.assert_finding(name, shown[name], impression=True))
    else:
        impression.append(w.pick(know.phrases["normal"]["impression"]))
    if "Support Devices" in shown and rng.random() < 0.5:
        devices = shown["Support Devices"].extra.get("devices", ["ett"])
        short = know.phrases["devices"][devices[0]]["short"]
        impression.insert(0, _sentence(w.pick(w.bank["Support Devices"]["imp_pos"]).format(device_short=short)))
    if implied and implied.impression_sentence:
        impression.insert(0, implied.impression_sentence)
    w.labels[FINDING_INDEX["No Finding"]] = 1.0 if not stated else math.nan

    findings_text = " ".join(sentences)
    impression_text = " ".join(impression) if len(impression) == 1 else " ".join(
        f"{i}. {s}" for i, s in enumerate(impression, 1)) if rng.random() < 0.5 else " ".join(impression)
    return Report(_layout(plan, know, rng, findings_text, impression_text), findings_text, impression_text, w.labels)


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, width=76, initial_indent=" ", subsequent_indent=" ")) or " "


def _layout(plan: StudyPlan, know: Knowledge, rng: np.random.Generator, findings: str, impression: str) -> str:
    exam = "CHEST (PA AND LAT)" if plan.view == "PA" else "CHEST (PORTABLE AP)"
    technique = "Chest PA and lateral" if plan.view == "PA" else "Portable AP chest radiograph"
    indication = know.phrases["indications"][int(rng.integers(len(know.phrases["indications"])))].format(sex=plan.sex)
    comparison = know.phrases["comparisons"][int(rng.integers(len(know.phrases["comparisons"])))]
    lines = [
        "                                 FINAL REPORT",
        f" EXAMINATION:  {exam}",
        " ",
        f" INDICATION:  {indication}",
        " ",
        f" TECHNIQUE:  {technique}",
        " ",
        f" COMPARISON:  {comparison}",
        " ",
        " FINDINGS: ",
        " ",
        _wrap(findings),
        " ",
        " IMPRESSION: ",
        " ",
        _wrap(impression),
    ]
    return "\n".join(lines) + "\n"


def label_cell(value: float) -> str:
    """chexpert.csv cell text: '1.0', '0.0', '-1.0' or '' (not mentioned)."""
    return "" if math.isnan(value) else f"{float(value):.1f}"


__all__ = ["Report", "write_report", "label_cell"]
