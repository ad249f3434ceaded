"""kdistill.data.rois: rois.jsonl reading and the VinDr-CXR / ChestX-Det importers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from kdistill.data.rois import load_rois, main, rasterize_polygon
from kdistill.errors import DataError, SkipCounter

VINDR_CSV = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
img1,Cardiomegaly,3,R10,691.0,1375.0,1653.0,1831.0
img1,Aortic enlargement,0,R10,1264.0,743.0,1611.0,1019.0
img1,Nodule/Mass,8,R9,100.5,200.0,150.0,260.0
img1,Pulmonary fibrosis,13,R9,10.0,10.0,50.0,50.0
img2,No finding,14,R8,,,,
img2,Other lesion,9,R8,1.0,2.0,3.0,4.0
img3,ILD,5,R8,5.0,6.0,70.0,80.0
img3,Pleural thickening,11,R9,20.0,30.0,40.0,50.0
"""


def test_vindr_import_maps_classes_and_reports_unmapped(tmp_path, capsys):
    (tmp_path / "train.csv").write_text(VINDR_CSV)
    out = tmp_path / "rois.jsonl"
    assert main(["--format", "vindr", str(tmp_path / "train.csv"), "--out", str(out)], prog="kdistill data import-rois") == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["study_id"], r["finding"], r["box"]) for r in lines] == [
        ("img1", "Cardiomegaly", [691.0, 1375.0, 1653.0, 1831.0]),
        ("img1", "Enlarged Cardiomediastinum", [1264.0, 743.0, 1611.0, 1019.0]),
        ("img1", "Lung Lesion", [100.5, 200.0, 150.0, 260.0]),
        ("img3", "Lung Opacity", [5.0, 6.0, 70.0, 80.0]),
        ("img3", "Pleural Other", [20.0, 30.0, 40.0, 50.0]),
    ]
    printed = capsys.readouterr().out
    assert "wrote 5 regions" in printed
    assert "Pulmonary fibrosis: 1" in printed and "Other lesion: 1" in printed and "no_finding_rows: 1" in printed
    rois = load_rois(out)
    assert sorted(rois) == ["img1", "img3"] and rois["img1"][0].dicom_id == "img1"


def test_vindr_bad_box_names_line(tmp_path):
    (tmp_path / "a.csv").write_text("image_id,class_name,x_min,y_min,x_max,y_max\nimg1,Cardiomegaly,10,10,5,20\n")
    with pytest.raises(DataError, match="line 2: bad box"):
        main(["--format", "vindr", str(tmp_path / "a.csv"), "--out", str(tmp_path / "r.jsonl")], prog="x")
    assert not (tmp_path / "r.jsonl").exists()


def test_chestx_det_import_rasterises_polygons(tmp_path, capsys):
    entries = [
        {"file_name": "36199.png", "syms": ["Effusion", "Calcification", "Nodule"],
         "boxes": [[2, 1, 6, 5], [0, 0, 1, 1], [7, 7, 9, 9]],
         "polygons": [[[2, 1], [6, 1], [6, 5], [2, 5]], [[0, 0], [1, 0], [1, 1]], [[7, 7], [9, 7], [9, 9]]]},
        {"file_name": "36200.png", "syms": [], "boxes": [], "polygons": []},
    ]
    (tmp_path / "det.json").write_text(json.dumps(entries))
    out = tmp_path / "root" / "rois.jsonl"
    assert main(["--format", "chestx-det", str(tmp_path / "det.json"), "--out", str(out), "--image-size", "10x8"],
                prog="x") == 0
    assert "Calcification: 1" in capsys.readouterr().out
    rois = load_rois(out)["36199"]
    assert [(r.finding, r.box) for r in rois] == [("Pleural Effusion", (2.0, 1.0, 6.0, 5.0)),
                                                  ("Lung Lesion", (7.0, 7.0, 9.0, 9.0))]
    mask = np.asarray(Image.open(out.parent / rois[0].mask))
    expected = np.zeros((8, 10), np.uint8)
    expected[1:6, 2:7] = 255  # the rectangle with its edges, rows 1..5, columns 2..6
    np.testing.assert_array_equal(mask, expected)
    triangle = np.asarray(Image.open(out.parent / rois[1].mask)) > 0
    # the triangle's top edge is row 7 (the last row of the 10x8 image), columns 7..9
    assert triangle[7, 7:10].all() and not triangle[7, 6] and not triangle[:7].any()


def test_rasterize_polygon_area():
    mask = rasterize_polygon([[0, 0], [9, 0], [9, 9], [0, 9]], (20, 12))
    assert mask.shape == (12, 20) and (mask > 0).sum() == 100


@pytest.mark.parametrize("line,problem", [
    ('{"study_id": "1", "finding": "Tumour", "box": [0, 0, 1, 1]}', "unknown finding 'Tumour'"),
    ('{"study_id": "1", "finding": "Edema", "box": [5, 0, 1, 1]}', "empty or inverted"),
    ('{"study_id": "1", "finding": "Edema", "box": [0, 0, 1]}', "4 finite numbers"),
    ('{"study_id": "1", "finding": "Edema", "box": null, "mask": null}', "neither box nor mask"),
    ('{"finding": "Edema", "box": [0, 0, 1, 1]}', "missing study_id"),
    ("{not json", "not JSON"),
])
def test_load_rois_rejects_bad_lines_by_line_number(tmp_path, line, problem):
    path = tmp_path / "rois.jsonl"
    path.write_text('{"study_id": "1", "dicom_id": "a", "finding": "Edema", "box": [0, 0, 1, 1]}\n' + line + "\n")
    with pytest.raises(DataError, match=f"line 2: .*{problem}"):
        load_rois(path)
    counter = SkipCounter("skip")
    assert len(load_rois(path, counter=counter)["1"]) == 1
    assert counter.summary() == {"bad_roi": 1}


def test_cli_reports_bad_input_as_error(tmp_path, capsys):
    from kdistill.cli import main as cli

    (tmp_path / "det.json").write_text('{"not": "a list"}')
    assert cli(["data", "import-rois", "--format", "chestx-det", str(tmp_path / "det.json"),
                "--out", str(tmp_path / "rois.jsonl")]) == 1
    assert "det.json: expected a JSON list" in capsys.readouterr().err
