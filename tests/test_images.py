"""kdistill.data.images: every format onto [0, 1], checked against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kdistill.data.images import read_image, read_resized_uint8, resize, to_uint8
from kdistill.errors import DataError


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=16, **extra):
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    pixels = np.asarray(pixels, dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def test_8bit_png_is_divided_by_255(tmp_path):
    pixels = np.array([[0, 255], [51, 102]], np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 1.0], [0.2, 0.4]], atol=1e-7)


def test_16bit_png_is_divided_by_65535(tmp_path):
    pixels = np.array([[0, 65535], [1000, 30000]], np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")  # really stored as 16-bit
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), pixels / 65535.0, rtol=1e-6)


def test_rgb_jpeg_becomes_grey(tmp_path):
    Image.new("RGB", (8, 6), (128, 128, 128)).save(tmp_path / "a.jpg", quality=100)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (6, 8)
    np.testing.assert_allclose(out, 128 / 255, atol=1.5 / 255)


def test_dicom_without_window_is_min_max_scaled(tmp_path):
    write_dicom(tmp_path / "a.dcm", [[0, 100], [200, 400]])
    np.testing.assert_allclose(read_image(tmp_path / "a.dcm"), [[0.0, 0.25], [0.5, 1.0]], atol=1e-7)


def test_dicom_monochrome1_is_inverted(tmp_path):
    # min-max of [[0,10],[20,40]] = [[0,.25],[.5,1]]; MONOCHROME1 (high = dark) -> 1 - x.
    write_dicom(tmp_path / "a.dcm", [[0, 10], [20, 40]], photometric="MONOCHROME1")
    np.testing.assert_allclose(read_image(tmp_path / "a.dcm"), [[1.0, 0.75], [0.5, 0.0]], atol=1e-7)


def test_dicom_rescale_window_and_monochrome1_by_hand(tmp_path):
    # raw [[50,100],[150,300]] * slope 2 + intercept -100 -> [[0,100],[200,500]].
    # LINEAR window c=256, w=257: below 127.5 -> 0, above 383.5 -> 1, else (x - 255.5)/256 + 0.5.
    # 200 -> 0.283203125.  MONOCHROME1 -> 1 - y.
    write_dicom(tmp_path / "a.dcm", [[50, 100], [150, 300]], photometric="MONOCHROME1",
                RescaleSlope=2, RescaleIntercept=-100, WindowCenter=256, WindowWidth=257)
    np.testing.assert_allclose(read_image(tmp_path / "a.dcm"), [[1.0, 1.0], [1 - 0.283203125, 0.0]], atol=1e-6)


def test_dicom_is_found_by_content_whatever_its_name(tmp_path):
    write_dicom(tmp_path / "image_without_suffix", [[0, 100], [200, 400]])
    np.testing.assert_allclose(read_image(tmp_path / "image_without_suffix"), [[0.0, 0.25], [0.5, 1.0]], atol=1e-7)


def test_truncated_jpeg_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        read_image(tmp_path / "t.jpg")
    assert "t.jpg" in str(err.value)
    with pytest.raises(DataError):
        read_resized_uint8(tmp_path / "t.jpg", 16)


def test_garbage_missing_and_truncated_dicom_raise_data_error(tmp_path):
    (tmp_path / "g.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="g.png"):
        read_image(tmp_path / "g.png")
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "missing.jpg")
    write_dicom(tmp_path / "d.dcm", np.arange(64).reshape(8, 8))
    data = (tmp_path / "d.dcm").read_bytes()
    (tmp_path / "d.dcm").write_bytes(data[:-40])
    with pytest.raises(DataError, match="d.dcm"):
        read_image(tmp_path / "d.dcm")


def test_resize_keeps_constant_images_and_takes_height_width():
    image = np.full((30, 50), 0.25, np.float32)
    out = resize(image, 16)
    assert out.shape == (16, 16)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)
    assert resize(image, (10, 20)).shape == (10, 20)
    assert to_uint8(np.array([0.0, 0.5, 1.0])).tolist() == [0, 128, 255]


def test_fast_jpeg_path_matches_full_decode(tmp_path):
    # A smooth gradient at 512x384: the DCT-scaled decode must agree with decode + resize.
    y, x = np.mgrid[0:384, 0:512]
    Image.fromarray(((x + y) * 255 / (511 + 383)).astype(np.uint8)).save(tmp_path / "g.jpg", quality=95)
    fast, original = read_resized_uint8(tmp_path / "g.jpg", 32)
    slow = to_uint8(resize(read_image(tmp_path / "g.jpg"), 32))
    assert original == (384, 512)
    assert fast.dtype == np.uint8 and fast.shape == (32, 32)
    assert np.abs(fast.astype(int) - slow.astype(int)).max() <= 2


def test_dicom_voi_lut_sequence_is_applied_and_scaled_by_its_top(tmp_path):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # 4 entries, first mapped value 0, 8-bit output
    item.add_new(0x00283006, "US", [0, 10, 200, 255])  # LUTData, VR given explicitly (US or OW)
    write_dicom(tmp_path / "a.dcm", [[0, 1], [2, 3]], VOILUTSequence=[item])
    np.testing.assert_allclose(read_image(tmp_path / "a.dcm"), [[0.0, 10 / 255], [200 / 255, 1.0]], atol=1e-6)
