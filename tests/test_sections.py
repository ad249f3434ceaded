"""kdistill.data.sections on realistic MIMIC-style reports (written for these tests), each with a quirk."""
from __future__ import annotations

import pytest

from kdistill.data.sections import extract_sections, normalize_section_name, split_sections

STANDARD = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""

WET_READ = """WET READ: ___ ___ ___ 9:52 PM
  Patchy right basilar opacity could be atelectasis or early pneumonia.
 ______________________________________________________________________________
                                 FINAL REPORT
 HISTORY:  Cough.

 FINDINGS:  Right basilar opacity, possibly early pneumonia.  Heart size normal.

 IMPRESSION:  Right basilar pneumonia not excluded.
"""

IMPRESSION_ONLY = """                                 FINAL REPORT
 INDICATION:  Intubation.

 IMPRESSION:  Endotracheal tube terminates 4 cm above the carina.  No
 pneumothorax.
"""

COMBINED = """                                 FINAL REPORT
 EXAMINATION:  Chest radiograph.

 FINDINGS AND IMPRESSION:  Moderate pulmonary edema, slightly worse than prior.
"""

CONCLUSION_AND_VIEW_TITLE = """ PORTABLE AP CHEST RADIOGRAPH:

 INDICATION:  Line placement.

 CHEST, SINGLE AP PORTABLE VIEW:  Right IJ line tip in the mid SVC.  Lungs clear.

 CONCLUSION:  Right IJ line in good position.
"""

NO_HEADERS = """Heart size is normal.  The lungs are clear.

No effusion or pneumothorax.  No acute process.
"""

TYPO_AND_TITLE_CASE = """ Findings: Small left effusion.
 Heart size: normal.

 IMPRESSON:  Small left pleural effusion.
"""

ONLY_ADMIN = """                                 FINAL REPORT
 INDICATION:  Chest pain.

 COMPARISON:  ___.
"""

TWO_FINDINGS_AND_NOTIFICATION = """ FINDINGS:
 Left lower lobe collapse.

 FINDINGS:
 Stable right pleural effusion.

 IMPRESSION: Left lower lobe collapse.

 NOTIFICATION:  Findings discussed with Dr. ___ by phone at 10:15 am.
"""

FINDINGS_ONLY_WITH_CRLF = " FINDINGS:\r\n  Lungs are clear.\r\n  No effusion.\r\n"

CASES = [
    # (report, expected findings, expected impression)
    (STANDARD,
     "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular opacities that most "
     "likely represent nipple shadows. The cardiomediastinal silhouette is normal.",
     "No acute cardiopulmonary process."),
    (WET_READ, "Right basilar opacity, possibly early pneumonia. Heart size normal.",
     "Right basilar pneumonia not excluded."),
    (IMPRESSION_ONLY, "", "Endotracheal tube terminates 4 cm above the carina. No pneumothorax."),
    (COMBINED, "", "Moderate pulmonary edema, slightly worse than prior."),
    (CONCLUSION_AND_VIEW_TITLE, "Right IJ line tip in the mid SVC. Lungs clear.", "Right IJ line in good position."),
    (NO_HEADERS, "Heart size is normal. The lungs are clear.", "No effusion or pneumothorax. No acute process."),
    (TYPO_AND_TITLE_CASE, "Small left effusion. Heart size: normal.", "Small left pleural effusion."),
    (ONLY_ADMIN, "", ""),
    (TWO_FINDINGS_AND_NOTIFICATION, "Left lower lobe collapse. Stable right pleural effusion.",
     "Left lower lobe collapse."),
    (FINDINGS_ONLY_WITH_CRLF, "Lungs are clear. No effusion.", ""),
]


@pytest.mark.parametrize("text,findings,impression", CASES,
                         ids=["standard", "wet-read", "impression-only", "combined", "conclusion+view-title",
                              "no-headers", "typo+title-case", "only-admin", "two-findings+notification", "crlf"])
def test_extract_sections(text, findings, impression):
    assert extract_sections(text) == (findings, impression)


def test_wet_read_text_never_leaks_into_sections():
    names = [name for name, _ in split_sections(WET_READ)]
    assert names[0] == "wet read"
    assert "Patchy" not in " ".join(extract_sections(WET_READ))


def test_wet_read_alone_gives_nothing_usable():
    text = "WET READ: ___ ___ 9:52 PM\n  Possible pneumonia.\n FINAL REPORT\n INDICATION:  Cough.\n"
    assert extract_sections(text) == ("", "")


@pytest.mark.parametrize("header,name", [
    ("IMPRESSION", "impression"), ("Impression", "impression"), ("CONCLUSION", "impression"),
    ("FINDINGS/IMPRESSION", "impression"), ("FINDINGS AND IMPRESSION", "impression"), ("FINAL IMPRESSION", "impression"),
    ("FINDINS", "findings"), ("CHEST, PA AND LATERAL", "findings"), ("PORTABLE AP CHEST", "findings"),
    ("REASON FOR EXAM", "indication"), ("CLINICAL HISTORY", "history"), ("COMPARISON EXAM", "comparison"),
    ("RECOMMENDATION(S)", "recommendations"), ("WET READ", "wet read"), ("SIGNED BY", "other"),
])
def test_section_names_are_normalised(header, name):
    assert normalize_section_name(header) == name
