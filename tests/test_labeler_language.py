"""Report language the labeler reads (issue 16, second pass): one sentence and its expected
CheXpert labels per pattern (1 positive, 0 negative, -1 uncertain, None blank; findings left
out are not checked).  Sentences marked "IU" are verbatim from the develop part of the IU /
Open-i dev set (benchmarks/labeler_real.py); the others are written to isolate the pattern.
The labeler's conventions, not NegBio's gold."""
from __future__ import annotations

import math

import pytest

from kdistill.labeler import label_report, mentions
from kdistill.labels import FINDING_INDEX

CASES = [
    # --- a comma item that states its own degree is out of a negation's or hedge's reach
    ("No pneumothorax, moderate right effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("No infiltrate, small left effusion.", {"Pleural Effusion": 1, "No Finding": None}),
    ("Without focal consolidation, small effusion persists.", {"Consolidation": 0, "Pleural Effusion": 1}),
    ("Possible right lower lobe pneumonia, small right pleural effusion.", {"Pneumonia": -1, "Pleural Effusion": 1}),
    ("No consolidation, mild cardiomegaly.", {"Consolidation": 0, "Cardiomegaly": 1}),
    # ... while a plain list stays negated, with or without its "or", and "large" stays inside
    ("No focal consolidation, pneumothorax, or large pleural effusion.",  # IU
     {"Consolidation": 0, "Pneumothorax": 0, "Pleural Effusion": 0, "No Finding": 1}),
    ("Negative for pneumothorax, pleural effusion.", {"Pneumothorax": 0, "Pleural Effusion": 0, "No Finding": 1}),  # IU
    ("The lungs are clear without focal airspace opacity, pleural effusion, pneumothorax.",  # IU
     {"Pleural Effusion": 0, "Pneumothorax": 0, "No Finding": 1}),
    ("No acute, displaced rib fractures.", {"Fracture": 0, "No Finding": 1}),  # IU
    # ... a list closed by its "or" ends there: a further comma item is a statement of its own
    ("No pneumothorax or effusion, heart enlarged.", {"Pneumothorax": 0, "Pleural Effusion": 0, "Cardiomegaly": 1}),
    ("No infiltrate, mass, or effusion, the heart is enlarged.", {"Pleural Effusion": 0, "Cardiomegaly": 1}),
    ("No pleural effusion or pneumothorax, or focal consolidation.",
     {"Pleural Effusion": 0, "Pneumothorax": 0, "Consolidation": 0, "No Finding": 1}),
    # --- word order of normal statements: a near "normal" distributes over a closed noun list,
    # and runs into "size of the heart"; "is again noted to be" is one verb
    ("Normal heart size, mediastinal contour and pulmonary vascularity.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "No Finding": 1}),
    ("FINDINGS: Stable, normal cardiac size, mediastinum, and central pulmonary vasculature.",  # IU
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
    ("Heart size mildly enlarged for technique, stable mediastinal contours.",  # IU: no list, no reach
     {"Cardiomegaly": 1, "Enlarged Cardiomediastinum": -1}),
    ("Normal size of the heart and mediastinum.", {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "No Finding": 1}),
    ("The heart is again noted to be enlarged.", {"Cardiomegaly": 1}),
    # --- "without significant change in" is stability, not a negation
    ("Without significant change in the small left effusion.", {"Pleural Effusion": 1}),
    # --- a parenthesis holds its own statement: the "no" before it does not reach inside
    ("No focal consolidation, pneumothorax, or large pleural effusion identified (blunting of costophrenic "
     "recesses bilaterally may represent small effusions or pleural thickening/scar.",  # IU
     {"Consolidation": 0, "Pneumothorax": 0, "Pleural Effusion": -1, "No Finding": None}),
    # --- the comparison at hand is no finding: its "without" / "no" negates nothing
    ("Without a comparison study, the age of this fracture is unknown.", {"Fracture": 1}),  # IU
    ("No prior studies, the nodule is new.", {"Lung Lesion": 1}),
    ("No comparison. No pneumothorax.", {"Pneumothorax": 0, "No Finding": 1}),
    ("No prior pneumothorax.", {"Pneumothorax": 0}),
    # --- synonyms and senses: "volume loss" is an abnormality outside the 14 columns (CheXpert's
    # no_finding list), not atelectasis; tuberculosis is no tube
    ("No change right upper lobe volume loss and fibrosis.", {"Atelectasis": None, "No Finding": None}),  # IU
    ("There are postsurgical changes of the left hemithorax with mild left-sided volume loss as evidenced by "
     "diaphragm elevation.", {"Atelectasis": None, "No Finding": None}),  # IU
    ("Left lower lobe collapse.", {"Atelectasis": 1}),
    ("Findings consistent with previous active pulmonary tuberculosis.", {"Support Devices": None, "No Finding": None}),
    ("No evidence of active tuberculosis.", {"Support Devices": None, "No Finding": 1}),  # IU
    ("Chest tube in place. NG tubing noted.", {"Support Devices": 1, "No Finding": 1}),
    ("Scoliosis as before.", {"No Finding": None}),  # IU ("re:(?:levo|dextro|kypho|roto)?scolio\w*")
    ("Mild dextroscoliosis and levocurvature.", {"No Finding": None}),
    ("Focal opacity in the right midlung zone worrisome for pneumonitis.", {"Pneumonia": None, "No Finding": None}),  # IU
    ("No evidence for pulmonary edema or pneumonitis.", {"Edema": 0, "No Finding": 1}),  # IU
    # --- hedges: a range across the normal limit, a consideration
    ("Heart size is normal to mildly enlarged.", {"Cardiomegaly": -1, "No Finding": None}),
    ("IMPRESSION: The cardiac silhouette appears be at upper limits of normal to borderline enlarged",  # IU
     {"Cardiomegaly": -1}),
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": 0}),  # IU
    # --- "borderline": a hedge on a size (CheXpert's one borderline rule), a grade before the
    # word naming the abnormality ("borderline cardiomegaly" reads as "mild cardiomegaly" does)
    ("Borderline heart size.", {"Cardiomegaly": -1, "No Finding": None}),  # IU
    ("The heart is borderline in size.", {"Cardiomegaly": -1}),  # IU
    ("Heart size is borderline.", {"Cardiomegaly": -1}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": 1, "No Finding": None}),  # IU
    ("Stable cardiomediastinal silhouette with borderline cardiomegaly.", {"Cardiomegaly": 1}),  # IU
    ("Accounting for technical factors heart size XXXX borderline enlarged.", {"Cardiomegaly": 1}),  # IU
    ("Borderline mediastinal widening.", {"Enlarged Cardiomediastinum": 1}),
    ("No borderline cardiomegaly.", {"Cardiomegaly": 0}),
    ("Early pneumonia is a consideration.", {"Pneumonia": -1}),
    ("Consider early right lower lobe pneumonia.", {"Pneumonia": -1}),
    ("Aspiration pneumonia should be considered.", {"Pneumonia": -1}),
    ("It is not clear whether this is atelectasis.", {"Atelectasis": -1}),
    ("Nodule of uncertain significance.", {"Lung Lesion": -1}),
    # --- a dictated "No, there is ..." states, the lungs "not clear" are abnormal
    ("FINDINGS: No there is an dextroscoliosis of the thoracic spine.", {"No Finding": None}),  # IU
    ("Lung parenchyma is not clear. No acute airspace disease.", {"Lung Opacity": 1, "No Finding": None}),  # IU
    ("No pneumothorax. There is a small effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("The lungs are clear.", {"Lung Opacity": None, "No Finding": 1}),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0][:60] for c in CASES])
def test_sentence(text, expected):
    row = label_report(text)
    got = {f: (None if math.isnan(row[FINDING_INDEX[f]]) else float(row[FINDING_INDEX[f]])) for f in expected}
    assert got == {f: (None if v is None else float(v)) for f, v in expected.items()}, mentions(text)
