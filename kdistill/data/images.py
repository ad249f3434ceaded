"""Read a chest X-ray image of any common format into one float32 array in [0, 1].

Formats and how each is put on [0, 1]:

| input | scaling |
| --- | --- |
| 8-bit JPEG / PNG (L, RGB, P, ...) | grey value / 255 (colour converted to luminance) |
| 16-bit PNG (``I;16``, ``I``) | value / 65535 |
| DICOM, VOI LUT sequence present | modality LUT (rescale slope/intercept), then the VOI LUT, divided by the LUT's top value |
| DICOM, WindowCenter/WindowWidth | modality LUT, then the linear window of DICOM PS3.3 C.11.2.1.2.1 onto [0, 1] |
| DICOM, neither | modality LUT, then per-image min-max (as most CXR pipelines do: stored bit depth rarely matches the used range) |

``MONOCHROME1`` DICOMs (high value = dark) are inverted after scaling (``1 - x``), so every
array returned has bright bone and dark lungs.

A file that cannot be decoded (corrupt, truncated, not an image) raises ``DataError`` naming
the file; Pillow's ``LOAD_TRUNCATED_IMAGES`` is left off on purpose so truncated JPEGs fail
instead of coming back half grey. So does a header claiming more pixels than Pillow's
decompression-bomb limit (a 2 KB JPEG "of" 30000x30000), and a DICOM whose pixel transform
(RescaleSlope/Intercept, WindowCenter/Width) or pixels are not finite numbers: NaN would pass
through every later step and come out as NaN probabilities, infinity as an all-black image.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from kdistill.errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


# What Pillow raises for undecodable files, oversized headers included (DecompressionBombError
# is not an OSError).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def read_image(path: str | Path) -> np.ndarray:
    """Image file -> float32 array (H, W) in [0, 1]. Raises ``DataError`` for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    if path.suffix.lower() in DICOM_SUFFIXES or _looks_like_dicom(path):
        out = _read_dicom(path)
    else:
        out = _read_raster(path)
    if not np.isfinite(out).all():  # cannot happen after the checks above; never let it through
        raise DataError(path, "decoded to non-finite pixel values")
    return out


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Float image in [0, 1] -> float32 (H', W') by antialiased bilinear resampling.

    ``size`` is S (square SxS) or (height, width). Non-square images are resized plainly,
    without padding: the aspect ratio changes, and boxes must be scaled per axis.
    """
    height, width = (size, size) if isinstance(size, int) else size
    pil = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    out = np.asarray(pil.resize((width, height), Image.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 0..255 (rounded)."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def to_unit_float(pixels) -> np.ndarray:
    """Stored pixels -> float32 in [0, 1]: integer arrays are 8-bit grey values (divided by 255),
    float arrays are already in [0, 1].

    Decided by the dtype's *kind*, not by ``dtype == uint8``: datasets' numpy format returns
    the prepared cache's uint8 images as int64, which must still be divided by 255."""
    pixels = np.asarray(pixels)
    if pixels.dtype.kind in "iu":
        return pixels.astype(np.float32) / 255.0
    return pixels.astype(np.float32, copy=False)


def read_resized_uint8(path: str | Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image and resize it to SxS uint8; also returns the stored image's (height, width).

    JPEGs use libjpeg's DCT scaling (``Image.draft``) to decode at no less than four times the
    target size: faster on 2-3k pixel radiographs, and within 2 grey levels of full decoding
    after the antialiased resize (twice the size was measured at up to 8 levels off on
    phantom images). Everything else goes through :func:`read_image`.
    """
    path = Path(path)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        try:
            with Image.open(path) as img:
                original = (img.height, img.width)
                if img.mode in ("L", "RGB", "CMYK", "YCbCr"):
                    img.draft("L", (4 * size, 4 * size))
                    img.load()
                    gray = img.convert("L") if img.mode != "L" else img
                    arr = np.asarray(gray, dtype=np.float32) / 255.0
                    return to_uint8(resize(arr, size)), original
        except _PIL_ERRORS as err:
            raise DataError(path, f"cannot decode image: {err}") from None
    arr = read_image(path)
    return to_uint8(resize(arr, size)), (arr.shape[0], arr.shape[1])


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES or _looks_like_dicom(path):
        ds = _dcmread(path, stop_before_pixels=True)
        try:
            return int(ds.Rows), int(ds.Columns)
        except (AttributeError, TypeError, ValueError):
            raise DataError(path, "DICOM without valid Rows/Columns") from None
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except _PIL_ERRORS as err:
        raise DataError(path, f"cannot read image header: {err}") from None


def _looks_like_dicom(path: Path) -> bool:
    # Part-10 DICOM files carry 'DICM' after a 128-byte preamble, whatever their name.
    if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_raster(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return from_pil(img, source=path)
    except DataError:
        raise
    except _PIL_ERRORS as err:
        raise DataError(path, f"cannot decode image: {err}") from None


def from_pil(img: Image.Image, source: str | Path | None = None) -> np.ndarray:
    """A decoded PIL image -> float32 (H, W) in [0, 1], scaled as the table above says (16-bit
    modes / 65535, everything else converted to 8-bit grey / 255). ``source`` names the image
    in errors."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        return np.clip(arr / 65535.0, 0.0, 1.0).astype(np.float32)
    if mode == "F":
        raise DataError(source, "floating-point images are not supported (no defined intensity range)")
    if mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def _dcmread(path: Path, stop_before_pixels: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError) as err:
        raise DataError(path, f"cannot read DICOM: {err}") from None


def _read_dicom(path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = _dcmread(path)
    try:
        raw = ds.pixel_array
    except Exception as err:  # pydicom raises many types for bad/missing pixel data
        raise DataError(path, f"cannot decode DICOM pixel data: {err}") from None
    if raw.ndim != 2:
        raise DataError(path, f"expected one greyscale frame, got pixel array of shape {raw.shape}")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(path, f"unsupported PhotometricInterpretation {photometric!r} for a radiograph")
    _check_finite_tags(path, ds)
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise DataError(path, f"pixel data holds {int((~np.isfinite(raw)).sum())} non-finite values (NaN or infinity)")
    with np.errstate(over="ignore", invalid="ignore"):
        modality = np.asarray(apply_modality_lut(raw, ds))
        values = modality.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(path, "RescaleSlope/RescaleIntercept (modality LUT) turn the pixels into non-finite values "
                              f"(slope {ds.get('RescaleSlope')}, intercept {ds.get('RescaleIntercept')})")
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        lut = ds.VOILUTSequence[0]
        top = float(np.max(np.asarray(lut.LUTData))) or 1.0
        # A LUT is indexed by integer stored values; a rescale may have made them float.
        indices = modality if np.issubdtype(modality.dtype, np.integer) else np.rint(modality).astype(np.int64)
        out = np.asarray(apply_voi_lut(indices, ds), dtype=np.float64) / top
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = _first(ds.WindowCenter)
        width = _first(ds.WindowWidth)
        if width < 1:
            raise DataError(path, f"WindowWidth {width} < 1")
        out = _linear_window(values, center, width)
    else:
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    out = np.clip(out, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


# Tags that map stored values to intensities: each must be a finite number when present.
_TRANSFORM_TAGS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")


def _check_finite_tags(path: Path, ds) -> None:
    for tag in _TRANSFORM_TAGS:
        if tag not in ds:
            continue
        value = ds[tag].value
        values = list(value) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
        for v in values:
            try:
                number = float(v)
            except (TypeError, ValueError):
                raise DataError(path, f"DICOM tag {tag} is {v!r}, not a number") from None
            if not np.isfinite(number):
                raise DataError(path, f"DICOM tag {tag} is {number} (not a finite number): the pixels cannot be "
                                      "mapped to intensities")


def _first(value) -> float:
    # WindowCenter/Width may be multi-valued; the first pair is the default presentation.
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' VOI function with output range [0, 1]."""
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    if width == 1:
        return np.where(x <= low, 0.0, 1.0)
    out = (x - (center - 0.5)) / (width - 1) + 0.5
    out = np.where(x <= low, 0.0, out)
    return np.where(x > high, 1.0, out)
