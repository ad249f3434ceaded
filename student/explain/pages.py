"""The explained reports as pages: ``index.html`` (one sortable row per study) and one
``<study folder>/study.html`` per study, rendered from the records with the Jinja2 templates in
``templates/``. Pages are self-contained and offline: CSS and JS are inlined, images are the
study folder's own PNGs, nothing is fetched. Every page carries the research-use statement, the
decision rule, and alt text on every image; text from the data is HTML-escaped (autoescape)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdistill import scoring
from kdistill.io import write_text_atomic
from kdistill.labels import FINDINGS
from student.explain.paths import inside
from student.explain.saliency import METHODS
from student.explain.texts import ShownText, ended_share, shared_counts

TEMPLATES = Path(__file__).with_name("templates")
RESEARCH_USE = "Research model output, not a diagnosis."
RESEARCH_USE_DETAIL = ("These pages show what a research model computed from each image. They have not been "
                       "validated for clinical use and must not guide the care of a patient.")
SHORT_NAMES = {"Atelectasis": "Atel.", "Cardiomegaly": "Cardiomeg.", "Consolidation": "Consol.", "Edema": "Edema",
               "Enlarged Cardiomediastinum": "Enl. Card.", "Fracture": "Fracture", "Lung Lesion": "Lesion",
               "Lung Opacity": "Opacity", "No Finding": "No Finding", "Pleural Effusion": "Effusion",
               "Pleural Other": "Pl. Other", "Pneumonia": "Pneumonia", "Pneumothorax": "PTX",
               "Support Devices": "Devices"}


def operating_text(info: dict[str, Any] | None) -> dict[str, str]:
    """The decision rule as the pages state it, from the checkpoint's ``thresholds.json``."""
    if not info:
        text = "fixed at 0.5 (the checkpoint has no thresholds.json)"
    else:
        policy = info.get("policy", "f1")
        where = f"the {info.get('chosen_on', 'validation')} split"
        if info.get("n_studies"):
            where += f" ({info['n_studies']} studies)"
        text = f"chosen on {where}: {scoring.POLICY_TEXT.get(policy, policy)}"
        if info.get("defaulted"):
            text += f"; 0.5 for {', '.join(info['defaulted'])} (no validation positive)"
    return {"text": text, "no_finding": scoring.NO_FINDING_RULE}


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def summarise(records: list[dict[str, Any]], wall_s: float | None = None) -> dict[str, Any]:
    """Counts over the set: texts that end, distinct texts, speed."""
    reports = [ShownText(**r["report"]) for r in records]
    rationales = [ShownText(**r["rationale"]) for r in records]
    out = {
        "n_studies": len(records),
        "reports_ended": ended_share(reports),
        "rationales_ended": ended_share(rationales),
        "distinct_reports": len({t.generated for t in reports}),
        "distinct_rationales": len({t.generated for t in rationales}),
        "studies_per_s": round(len(records) / wall_s, 2) if wall_s else None,
    }
    for key in ("reports", "rationales"):
        share = out[f"{key}_ended"]
        out[f"{key}_ended_text"] = "n/a" if share is None else f"{round(100 * share)}%"
    return out


def write_pages(records: list[dict[str, Any]], out_dir: Path, checkpoint: str, operating: dict[str, Any] | None,
                source: str = "", wall_s: float | None = None) -> dict[str, Any]:
    """Mark texts shared across studies, then write each study's ``explanation.json`` and
    ``study.html`` and the ``index.html``; returns the set's summary (``summarise``)."""
    for key in ("report", "rationale"):
        for record, n in zip(records, shared_counts([r[key]["generated"] for r in records])):
            record[f"{key}_shared_with"] = n
    env = _environment()
    method = METHODS[records[0]["saliency"]["method"]] if records else next(iter(METHODS.values()))
    common = {"research_use": RESEARCH_USE, "research_use_detail": RESEARCH_USE_DETAIL, "checkpoint": checkpoint,
              "operating": operating_text(operating), "method": method}
    study_page = env.get_template("study.html")
    for record in records:
        folder = out_dir / record["folder"]
        write_text_atomic(inside(out_dir, folder / "explanation.json"),
                          json.dumps({**record, "operating_points": common["operating"]}, indent=2) + "\n")
        write_text_atomic(inside(out_dir, folder / "study.html"), study_page.render(r=record, **common))
    summary = summarise(records, wall_s)
    findings = [{"name": f, "short": SHORT_NAMES.get(f, f)} for f in FINDINGS]
    page = env.get_template("index.html").render(records=records, findings=findings, summary=summary, source=source,
                                                 has_reference=any(r["agreement"] for r in records), **common)
    index = out_dir / "index.html"
    write_text_atomic(inside(out_dir, index), page)
    return {"index": str(index), **summary}
