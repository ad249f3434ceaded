"""The explain pages in a real browser (headless Chromium, Debian's ``chromium`` package, which
``make test`` installs when it is absent): every image loads and is not blank, clicking a column
header sorts the index's rows by it (again: reversed), nothing is logged to the console, and
screenshots are saved under the test's temp folder. Skipped, saying why, only where no Chromium
could be installed."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from explain_support import KnownModel, gradient_images, probs_with
from student.explain import explain_batch, write_pages
from student.explain.browser import check_page, find_chromium, screenshot
from student.explain.paths import study_folder

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="Chromium is not installed and could not be: `make test` runs `apt-get install -y chromium` when "
           "it is absent (needs root and Debian's package network)")


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    out = tmp_path_factory.mktemp("explained")
    probs = np.stack([probs_with(Cardiomegaly=0.9, Edema=0.2), probs_with(Cardiomegaly=0.3, Edema=0.8),
                      probs_with(Cardiomegaly=0.6, Edema=0.55), probs_with(No_Finding=0.9)])
    labels = np.zeros((4, 14))
    labels[0, 1] = 1
    model = KnownModel(probs=probs, reports=["Enlarged heart.", "Edema and", "Both.", "Normal study."],
                       rationales=["Heart.", "Lungs.", "Heart.", "Normal."])
    ids = ["s-b", "s-d", "s-a", "s-c"]
    records = explain_batch(model, gradient_images(4), ids, out, labels=labels,
                            references=["Cardiomegaly.", "Edema.", None, "Normal."])
    write_pages(records, out, "ckpt", {"policy": "prevalence", "chosen_on": "validate", "n_studies": 61})
    return out, ids


def _assert_images_fine(verdict):
    assert verdict["images"], "no images on the page"
    for img in verdict["images"]:
        assert img["loaded"], f"{img['src']} did not load"
        assert img["alt"] and len(img["alt"]) > 10, f"{img['src']} has no alt text"
        assert img.get("error") is None, img
        assert img["max"] - img["min"] > 20 and img["std"] > 3, f"{img['src']} is blank: {img}"


def test_index_images_load_sorting_reorders_rows_and_the_console_stays_silent(pages):
    out, ids = pages
    verdict = check_page(out / "index.html")
    assert verdict["errors"] == [] and verdict["console"] == []
    _assert_images_fine(verdict)
    sort = verdict["sort"]
    assert sort["initial"] == [study_folder(s) for s in ids]
    by_header = {c["header"]: c for c in sort["columns"]}
    assert len(by_header) == len(sort["columns"]) >= 19  # study, image, decided, agreement, ends, 14 findings
    for column in sort["columns"]:
        for click, reverse in (("first", False), ("second", True)):
            keys = [k for k in column[click]["keys"] if k != ""]
            numeric = all(_is_number(k) for k in keys)
            want = sorted(keys, key=float if numeric else str, reverse=reverse)
            assert keys == want, (column["header"], click, keys)
        assert column["first"]["aria"] == "ascending" and column["second"]["aria"] == "descending"
    card = by_header["Cardiomeg."]  # probabilities 0.9, 0.3, 0.6, 0.1: the rows really move
    assert card["first"]["order"] == [study_folder(s) for s in ("s-c", "s-d", "s-a", "s-b")]
    assert card["second"]["order"] == [study_folder(s) for s in ("s-b", "s-a", "s-d", "s-c")]
    assert by_header["Study"]["first"]["order"] == [study_folder(s) for s in sorted(ids)]


def test_study_page_images_load_and_it_says_what_it_shows(pages):
    out, ids = pages
    verdict = check_page(out / study_folder(ids[1]) / "study.html")
    assert verdict["errors"] == [] and verdict["console"] == []
    _assert_images_fine(verdict)
    assert len(verdict["images"]) == 1 + 1 + 13  # radiograph, colour bar, one overlay per finding but No Finding
    text = verdict["text"]
    for words in ("Research model output, not a diagnosis.", "prevalence-matched", "class-query attention",
                  "cut: the model stopped at its length limit", "Reference report", "Edema."):
        assert words in text, words


def test_screenshots_of_both_pages_are_not_blank(pages, tmp_path):
    out, ids = pages
    for page, name in ((out / "index.html", "index.png"), (out / study_folder(ids[0]) / "study.html", "study.png")):
        png = screenshot(page, tmp_path / name, width=1200, height=900)
        pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
        assert pixels.shape == (900, 1200) and pixels.std() > 10
        dark_banner = pixels[:20].mean() < 120  # the research-use banner is drawn at the top
        assert dark_banner


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
