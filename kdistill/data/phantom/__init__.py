"""The phantom chest X-ray generator: radiograph-like images with ground-truth regions,
MIMIC-style reports and CheXpert labels, in the MIMIC-CXR-JPG v2 layout, plus the teacher's
biomedical text corpus.  Knowledge lives in ``kdistill/data/findings.yaml``.

    from kdistill.data.phantom import PhantomConfig, synthesize
    synthesize(PhantomConfig(n_studies=200, seed=0), "runs/phantom")
"""
from kdistill.data.phantom.config import PhantomConfig
from kdistill.data.phantom.render import RenderResult, render_study
from kdistill.data.phantom.spec import FindingSpec
from kdistill.data.phantom.synth import synthesize

__all__ = ["PhantomConfig", "synthesize", "render_study", "RenderResult", "FindingSpec"]
