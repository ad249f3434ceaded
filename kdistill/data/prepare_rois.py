"""Expert regions in prepared pixels (``kdistill data prepare``'s ``roi_boxes`` and ``roi_bits``).

Images are resized plainly to SxS (no padding; aspect ratio is not kept), so boxes scale per
axis by (S / width, S / height). A box fills the prepared pixels
[floor(x0'), ceil(x1')) x [floor(y0'), ceil(y1')), clipped to the image (boxes reaching outside
the image are kept, clipped, and counted); a mask is resized with nearest-neighbour sampling and
wins over the box of the same region. A mask-only region gets the bounding box of its resized
mask in ``roi_boxes``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kdistill.errors import DataError
from kdistill.labels import FINDING_INDEX


def rasterize_rois(rois: list[dict], root: Path, size: int, height: int, width: int):
    """Regions of one image -> (roi_boxes rows, uint16 SxS bitfield, number of boxes clipped),
    in prepared pixels."""
    sx, sy = size / width, size / height
    bits = np.zeros((size, size), dtype=np.uint16)
    boxes: list[list[float]] = []
    clipped = 0
    for roi in rois:
        index = FINDING_INDEX[roi["finding"]]
        flag = np.uint16(1 << index)
        box = None
        if roi.get("box") is not None:
            x0, y0, x1, y1 = roi["box"]
            box = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
            inside = [min(max(box[0], 0.0), size), min(max(box[1], 0.0), size),
                      min(max(box[2], 0.0), size), min(max(box[3], 0.0), size)]
            if inside != box:
                clipped += 1
                box = inside if inside[0] < inside[2] and inside[1] < inside[3] else None
        if roi.get("mask"):
            region = read_mask(root / roi["mask"], size, height, width)
            bits[region] |= flag
            if box is None:
                ys, xs = np.nonzero(region)
                if len(xs) == 0:
                    continue
                box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        elif box is not None:
            bits[math.floor(box[1]):math.ceil(box[3]), math.floor(box[0]):math.ceil(box[2])] |= flag
        if box is not None:
            boxes.append([float(index), *box])
    return boxes, bits, clipped


def read_mask(path: Path, size: int, height: int, width: int) -> np.ndarray:
    """A region's mask PNG (the stored image's size) -> boolean SxS, nearest-neighbour resized."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if (img.height, img.width) != (height, width):
                raise DataError(path, f"mask is {img.width}x{img.height}, its image {width}x{height}")
            small = img.convert("L").resize((size, size), Image.NEAREST)
            return np.asarray(small) > 0
    except FileNotFoundError:
        raise DataError(path, "mask file not found") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(path, f"cannot decode mask: {err}") from None
