"""``kdistill explain``: explained reports a clinician-researcher can read and check.

Reads a student checkpoint (``student.load``) and either image files or a prepared cache split;
writes, under ``--out`` only, one folder per study (``explanation.json``, ``study.html``, the
radiograph, one overlay per finding, the colour bar) and ``index.html``, a sortable table of
every study. Modules: ``run`` (inputs -> model -> records), ``records`` (one study), ``saliency``
(methods, colour scale, per-map figures), ``texts`` (texts that end), ``paths`` (safe,
unique folders), ``pages`` (Jinja2 templates in ``templates/``), ``browser`` (headless Chromium
checks and screenshots). Nothing leaves the machine.
"""
from student.explain.config import ExplainConfig
from student.explain.pages import write_pages
from student.explain.run import explain_batch, explain_files, explain_prepared, main, run_stage, unit_pixels

__all__ = ["ExplainConfig", "explain_batch", "explain_files", "explain_prepared", "main", "run_stage", "unit_pixels",
           "write_pages"]
