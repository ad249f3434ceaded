"""The `implied` consistency rule: findings a cause stated in the report brings may be named."""
from __future__ import annotations

import math

import numpy as np

from kdistill.labeler import label_reports
from kdistill.labeler.consistency import implied_findings, is_consistent, is_consistent_implied
from kdistill.labels import FINDING_INDEX, FINDINGS


def _row(*names, value=1.0):
    row = [math.nan] * len(FINDINGS)
    for n in names:
        row[FINDING_INDEX[n]] = value
    return row


def _names(mask_row):
    return {FINDINGS[i] for i in np.nonzero(mask_row)[0]}


def test_a_stated_cause_implies_what_findings_yaml_says_it_brings():
    got = implied_findings([
        "FINDINGS: Moderate cardiomegaly. IMPRESSION: Findings consistent with congestive heart failure.",
        "IMPRESSION: Cardiac decompensation.",
        "The appearance is compatible with ARDS.",
        "Right lower lobe pneumonia.",
        "No evidence of congestive heart failure. Heart size normal.",
        "Lungs are clear.",
        "cards noted; shards of glass",  # 'ards' inside words, lower case: not the acronym
    ])
    assert _names(got[0]) == _names(got[1]) == {"Cardiomegaly", "Edema", "Pleural Effusion"}
    assert _names(got[2]) == {"Edema", "Lung Opacity"}
    assert _names(got[3]) == {"Consolidation", "Lung Opacity"}
    assert not got[4].any() and not got[5].any() and not got[6].any()


def test_implied_allows_the_brought_findings_and_nothing_else():
    # the label file, read from the report, has cardiomegaly only: the cause's edema and effusion are missing
    study = _row("Cardiomegaly")
    implied = implied_findings(["Cardiomegaly. Findings consistent with congestive heart failure."])[0]
    names_cause = _row("Cardiomegaly", "Edema", "Pleural Effusion")
    assert not is_consistent(names_cause, study)
    assert is_consistent_implied(names_cause, study, implied)
    # a finding no stated cause brings is still flagged, and a positive finding is still required
    assert not is_consistent_implied(_row("Cardiomegaly", "Pneumothorax"), study, implied)
    assert not is_consistent_implied(_row("Edema"), study, implied)
    # with no cause stated the rule is the strict one
    none = implied_findings(["Cardiomegaly."])[0]
    assert is_consistent_implied(_row("Cardiomegaly"), study, none)
    assert not is_consistent_implied(names_cause, study, none)


def test_our_labeler_misses_the_implied_findings_the_rule_exists_for():
    report = "FINDINGS: The heart is enlarged. IMPRESSION: Findings consistent with congestive heart failure."
    labels = label_reports([report])[0]
    # as CheXpert's mention lists do, "heart failure" reads as edema; the effusion it brings is not read
    assert labels[FINDING_INDEX["Cardiomegaly"]] == labels[FINDING_INDEX["Edema"]] == 1.0
    assert labels[FINDING_INDEX["Pleural Effusion"]] != 1.0
    assert implied_findings([report])[0][FINDING_INDEX["Pleural Effusion"]]
    named = label_reports(["Cardiomegaly with pulmonary edema and bilateral pleural effusions."])[0]
    assert not is_consistent(named, labels) and is_consistent_implied(named, labels, implied_findings([report])[0])
    # ARDS and lobar pneumonia: the labeler reads neither's opacities
    ards, lobar = label_reports(["Findings consistent with ARDS.", "Right lower lobe pneumonia."])
    assert ards[FINDING_INDEX["Lung Opacity"]] != 1.0 and lobar[FINDING_INDEX["Consolidation"]] != 1.0
