"""The phantom chest X-ray generator: radiograph-like images with ground-truth regions,
MIMIC-style reports and CheXpert labels, in the MIMIC-CXR-JPG v2 layout, plus the teacher's
biomedical text corpus.  Knowledge lives in ``kdistill/data/findings.yaml``.

    from kdistill.data.phantom import PhantomConfig, synthesize
    synthesize(PhantomConfig(n_studies=200, seed=0), "runs/phantom")

Modules: ``config`` (every knob), ``sampler`` (study plans: subjects, splits, findings, marker
and region draws), ``anatomy`` + ``painters`` + ``render`` (the frontal image: normal chest, one
painter per finding, composition), ``lateral``, ``shortcut`` (the corner marker), ``report`` and
``style`` (the report and its label rows; the report_style regime), ``corpus``, ``synth`` (the
files; their formats, side files included, are in its docstring), ``command`` (``kdistill data
synth``).  Knobs for explanation-guided learning: ``shortcut_finding`` / ``shortcut_strength`` /
``shortcut_splits`` (``shortcut.jsonl``), ``rois_fraction``, ``report_style``; the defaults give the
frozen default phantom (``tests/test_phantom_digests.py``).
"""
from kdistill.data.phantom.config import PhantomConfig
from kdistill.data.phantom.render import RenderResult, render_study
from kdistill.data.phantom.spec import FindingSpec
from kdistill.data.phantom.synth import synthesize

__all__ = ["PhantomConfig", "synthesize", "render_study", "RenderResult", "FindingSpec"]
