"""Reading a training batch from the prepared Arrow cache vs decoding + resizing the JPEGs.

    .venv/bin/python benchmarks/prepare_read.py [--studies 64] [--image-size 1024] [--size 128]

Builds a dataset in the MIMIC-CXR-JPG layout (the phantom generator's when it is available and
``--phantom`` is given, else synthetic radiograph-like JPEGs written here), prepares it at
``--size``, then times reading the same batch of ``--studies`` images four ways:

* decode + resize: ``read_image`` (full decode) then antialiased resize - what a dataloader
  without the cache does every epoch;
* fast decode + resize: JPEG DCT-scaled decoding (``read_resized_uint8``);
* cache, numpy format: ``dataset.with_format("numpy")[0:n]["image"]``;
* cache, read_batch: ``kdistill.data.prepare.read_batch`` (stored uint8, no int64 widening).

Each timing is the median of ``--repeats`` runs, all in one process; the speed-ups are ratios
of those medians. Prints a table, writes benchmarks/results/prepare_read.json.
"""
from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdistill.data.images import read_image, read_resized_uint8, resize, to_uint8  # noqa: E402
from kdistill.data.prepare import load_prepared, prepare, read_batch  # noqa: E402
from kdistill.io import write_json  # noqa: E402
from kdistill.labels import FINDINGS  # noqa: E402


def synthetic_tree(root: Path, studies: int, image_size: int, seed: int = 0) -> Path:
    """Radiograph-like JPEGs (smooth body + lung fields + noise, so JPEG sizes are realistic)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:image_size, 0:image_size] / image_size
    body = 0.35 + 0.4 * np.exp(-((x - 0.5) ** 2) / 0.08)
    lungs = 0.3 * (np.exp(-(((x - 0.3) / 0.12) ** 2 + ((y - 0.45) / 0.25) ** 2))
                   + np.exp(-(((x - 0.7) / 0.12) ** 2 + ((y - 0.45) / 0.25) ** 2)))
    meta, split, labels = [], [], []
    for k in range(studies):
        subject, study, dicom = f"1{k:07d}", f"5{k:07d}", f"dicom{k:05d}"
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        image = np.clip(body - lungs + rng.normal(0, 0.03, body.shape), 0, 1)
        Image.fromarray(to_uint8(image)).save(folder / f"{dicom}.jpg", quality=90)
        (folder.parent / f"s{study}.txt").write_text(" FINAL REPORT\n FINDINGS:  Lungs clear.\n\n IMPRESSION:  Normal.\n")
        meta.append([dicom, subject, study, "PA", image_size, image_size])
        split.append([dicom, study, subject, "train"])
        labels.append([subject, study] + [""] * len(FINDINGS))
    for name, header, rows in [
        ("mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"], meta),
        ("mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split),
        ("mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *FINDINGS], labels),
    ]:
        with open(root / name, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
    return root


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=64, help="batch size = number of studies (default 64)")
    parser.add_argument("--image-size", type=int, default=1024, help="stored JPEG side in pixels (default 1024)")
    parser.add_argument("--size", type=int, default=128, help="prepared size S (default 128)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--phantom", action="store_true", help="use the phantom generator's dataset")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prepare_read.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.phantom:
            from kdistill.data.phantom import PhantomConfig, synthesize

            synthesize(PhantomConfig(n_studies=2 * args.studies, image_size=args.image_size, corpus_mb=0.0), tmp / "data")
            source = f"phantom {args.image_size}x{args.image_size}"  # 2x studies: ~80% land in train
        else:
            synthetic_tree(tmp / "data", args.studies, args.image_size)
            source = f"synthetic {args.image_size}x{args.image_size} JPEGs"
        t0 = time.perf_counter()
        prepare(tmp / "data", tmp / "prepared", size=args.size, workers=1)
        prepare_s = time.perf_counter() - t0
        train = load_prepared(tmp / "prepared")["train"]
        n = min(args.studies, len(train))
        paths = [str(p) for p in sorted((tmp / "data" / "files").rglob("*.jpg"))]
        by_id = {Path(p).stem: p for p in paths}
        batch_paths = [by_id[d] for d in train["dicom_id"][:n]]
        stored = Image.open(batch_paths[0]).size

        def decode_resize():
            return np.stack([to_uint8(resize(read_image(p), args.size)) for p in batch_paths])

        def fast_decode_resize():
            return np.stack([read_resized_uint8(p, args.size)[0] for p in batch_paths])

        def cache_numpy():
            return train.with_format("numpy")[0:n]["image"]

        def cache_read_batch():
            return read_batch(train, slice(0, n), columns=["image", "labels"])["image"]

        assert np.abs(cache_read_batch().astype(int) - decode_resize().astype(int)).max() <= 3  # same pictures
        timings = {
            "decode_resize": median_time(decode_resize, args.repeats),
            "fast_decode_resize": median_time(fast_decode_resize, args.repeats),
            "cache_numpy": median_time(cache_numpy, args.repeats),
            "cache_read_batch": median_time(cache_read_batch, args.repeats),
        }
    base = timings["decode_resize"]
    result = {
        "benchmark": "prepare_read", "source": source, "stored_image_wxh": list(stored), "prepared_size": args.size,
        "batch": n, "repeats": args.repeats, "prepare_s": round(prepare_s, 3),
        "seconds_per_batch": {k: round(v, 6) for k, v in timings.items()},
        "speedup_vs_decode_resize": {k: round(base / v, 1) for k, v in timings.items()},
        "python": platform.python_version(), "machine": platform.machine(),
    }
    print(f"batch of {n} images, stored {stored[0]}x{stored[1]} ({source}) -> {args.size}x{args.size}; "
          f"median of {args.repeats}")
    print(f"{'method':<22}{'s / batch':>12}{'images / s':>12}{'speed-up':>10}")
    for key, seconds in timings.items():
        print(f"{key:<22}{seconds:>12.4f}{n / seconds:>12.0f}{base / seconds:>9.1f}x")
    out = Path(args.out)
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
