"""Hostile images and ids: non-finite DICOM transforms and pixels, decompression bombs, ids that are
not plain names, and a prepared cache written over a user's folder."""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from fixtures.kd_data.tree import build_tree
from kdistill.data import prepare as prep
from kdistill.data.check import check_dataset, is_plain_id
from kdistill.data.images import image_size, read_image, read_resized_uint8
from kdistill.errors import DataError
from test_images import write_dicom

META = "mimic-cxr-2.0.0-metadata.csv"
PA1 = "files/p10/p10000032/s50414267/d-pa-1.jpg"
PIXELS = np.arange(64).reshape(8, 8) * 100


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about 'nan' as a DS value: that is the point
        yield


@pytest.mark.parametrize("tags, named", [
    ({"WindowCenter": "nan", "WindowWidth": "400"}, "DICOM tag WindowCenter is nan"),
    ({"WindowCenter": "100", "WindowWidth": "inf"}, "DICOM tag WindowWidth is inf"),
    ({"WindowCenter": ["100", "nan"], "WindowWidth": ["400", "400"]}, "DICOM tag WindowCenter is nan"),
    ({"RescaleSlope": "inf", "RescaleIntercept": "0"}, "DICOM tag RescaleSlope is inf"),
    ({"RescaleSlope": "1", "RescaleIntercept": "nan"}, "DICOM tag RescaleIntercept is nan"),
    ({"RescaleSlope": "1e308", "RescaleIntercept": "1e308"}, "RescaleSlope/RescaleIntercept .* non-finite values"),
])
def test_non_finite_dicom_pixel_transforms_are_data_errors_naming_file_and_tag(tmp_path, tags, named):
    path = write_dicom(tmp_path / "a.dcm", PIXELS, **tags)
    with pytest.raises(DataError, match=named) as err:
        read_image(path)
    assert err.value.path == str(path)
    with pytest.raises(DataError, match=named):
        read_resized_uint8(path, 4)


def test_a_finite_window_still_reads(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", PIXELS, WindowCenter="3150", WindowWidth="6301")
    # DICOM PS3.3 C.11.2.1.2.1: (x - (c - 0.5)) / (w - 1) + 0.5 inside the window, 1 above it
    np.testing.assert_allclose(read_image(path), np.minimum((PIXELS - 3149.5) / 6300 + 0.5, 1.0), rtol=1e-5)


def test_non_finite_float_pixels_are_a_data_error(tmp_path):
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    pixels = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    pixels[1, 2] = np.nan
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    ds.FloatPixelData = pixels.tobytes()
    dcmwrite(tmp_path / "f.dcm", ds, enforce_file_format=True)
    with pytest.raises(DataError, match="f.dcm: pixel data holds 1 non-finite values"):
        read_image(tmp_path / "f.dcm")


def _bomb(path, side=30000):
    """A ~600-byte JPEG whose frame header claims side x side pixels."""
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    at = data.find(b"\xff\xc0")
    data[at + 5:at + 9] = side.to_bytes(2, "big") + side.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def test_a_decompression_bomb_is_a_named_bad_image(tmp_path):
    path = _bomb(tmp_path / "bomb.jpg")
    assert path.stat().st_size < 2048
    for read in (image_size, read_image, lambda p: read_resized_uint8(p, 32)):
        with pytest.raises(DataError, match="bomb.jpg: .*exceeds limit"):
            read(path)


def test_check_and_prepare_count_a_decompression_bomb(tmp_path):
    root = build_tree(tmp_path / "t")
    _bomb(root / PA1)
    report = check_dataset(root)
    bad = [i for i in report.issues if i.kind == "corrupt_image"]
    assert len(bad) == 1 and bad[0].path.endswith("d-pa-1.jpg") and "exceeds limit" in bad[0].message
    with pytest.raises(DataError, match="d-pa-1.jpg"):
        prep.prepare(root, tmp_path / "a", size=8, workers=1)
    meta = prep.prepare(root, tmp_path / "b", size=8, workers=1, on_error="skip")
    assert meta["counts"]["skipped"] == {"unreadable_image": 1}
    assert meta["counts"]["train"] == 1  # of 2: the bomb's study is left out, counted


@pytest.mark.parametrize("value, plain", [("50414267", True), ("d-pa-1", True), ("a.b_c", True), ("..", False),
                                          ("../etc", False), ("a/b", False), ("a\\b", False), ("x\x07y", False),
                                          (".hidden", False), ("-rf", False), ("a b", False), ("", False),
                                          ("a..b", False)])
def test_plain_ids(value, plain):
    assert is_plain_id(value) is plain


def test_data_check_reports_ids_that_are_not_plain_identifiers(tmp_path):
    root = build_tree(tmp_path / "t", rois=False)
    text = (root / META).read_text()
    text = text.replace("d-ap-2,10000032,53189527", "../../x,10000032,53189527")
    text = text.replace("d-pa-4,10001217,59999999", "d-pa-4,10001217,5999/9999")
    (root / META).write_text(text)
    report = check_dataset(root)
    bad = sorted(i.message for i in report.issues if i.kind == "bad_id")
    assert len(bad) == 2 and report.errors
    assert "dicom_id '../../x' is not a plain identifier" in bad[0]
    assert "study_id '5999/9999' is not a plain identifier" in bad[1]
    assert all(i.path.endswith(META) for i in report.issues if i.kind == "bad_id")


def test_prepare_refuses_a_users_folder_and_leaves_it_unchanged(tmp_path):
    root = build_tree(tmp_path / "t")
    out = tmp_path / "out"
    (out / "dataset").mkdir(parents=True)
    (out / "dataset" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"out: exists, is not empty \(dataset\) and is not a kdistill prepared cache"):
        prep.prepare(root, out, size=8, workers=1)
    assert [p.name for p in out.rglob("*")] == ["dataset", "notes.txt"]
    with pytest.raises(DataError):
        prep.main([str(root), "--out", str(out), "size=8", "workers=1"], prog="kdistill data prepare")
    assert (out / "dataset" / "notes.txt").read_text() == "mine"
    # its own output is rewritten freely; --overwrite (or overwrite=true) takes the user's folder
    assert prep.main([str(root), "--out", str(out), "size=8", "workers=1", "overwrite=true"],
                     prog="kdistill data prepare") == 0
    assert json.loads((out / "meta.json").read_text())["size"] == 8
    assert prep.main([str(root), "--out", str(out), "size=16", "workers=1"], prog="kdistill data prepare") == 0
