"""The default phantom is frozen: a tiny phantom's files must keep these sha256 digests.

The demo's figures, the tests' known answers and every cached run rest on the phantom being
byte-identical for the same seed and config.  Files added since the digests were first taken
(ground_truth.csv.gz, shortcut.jsonl) came with their own groups; the groups that existed then
kept their digests.  A change that alters the default output (a new
random draw in the hot path, a reordered painter, a reworded phrase bank) fails here and has to
update the digests on purpose, saying why in its commit.  ``phantom.json`` is compared without
its ``config`` block, which grows whenever a knob is added.  The digests depend on the project's
pinned numpy (random streams) and Pillow/libjpeg (JPEG bytes) too.

To print new digests: ``python tests/test_phantom_digests.py``.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from kdistill.data.phantom import PhantomConfig, synthesize

CASES = {
    "default": {},
    "knobs": {"lateral_share": 0.5, "label_noise": 0.1, "shortcut_finding": "Pneumothorax", "shortcut_strength": 0.8},
    # The experiment knobs other engineers build on.  (report_style is left out: its label file
    # follows kdistill.labeler, which changes on its own; tests/test_phantom_knobs.py covers it.)
    "experiment_knobs": {"shortcut_finding": "Pneumothorax", "rois_fraction": 0.5,
                         "shortcut_splits": {"train": 0.9, "validate": 0.9, "test": 0.1}},
}
GROUPS = {  # group -> glob of the files hashed together
    "images": "files/*/*/*/*.jpg",
    "reports": "files/*/*/*.txt",
    "masks": "rois/*.png",
    "metadata": "mimic-cxr-2.0.0-metadata.csv.gz",
    "chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz",
    "ground_truth": "ground_truth.csv.gz",
    "split": "mimic-cxr-2.0.0-split.csv.gz",
    "rois": "rois.jsonl",
    "shortcut": "shortcut.jsonl",
    "report_style": "report_style.jsonl",
    "corpus": "corpus/corpus.jsonl",
}
EXPECTED: dict[str, dict[str, str]] = {
    "default": {
        "images": "24:569e493907a7171d",
        "reports": "24:2ad0b1f9dba4ec7f",
        "masks": "44:badfebbfc9fba0fd",
        "metadata": "1:4c64e3130b60b325",
        "chexpert": "1:92899c179196e650",
        "ground_truth": "1:0eef7720026cce26",
        "split": "1:fe04397cfe183903",
        "rois": "1:5873d0a9a471b3ec",
        "shortcut": "0:e3b0c44298fc1c14",
        "report_style": "0:e3b0c44298fc1c14",
        "corpus": "1:a42cd32199326c83",
        "manifest": "ce2f13fc0dee0e2e",
        "unlisted_files": "",
    },
    "knobs": {
        "images": "29:a89c1b6135fd2cd5",
        "reports": "24:7dce6a9e5361b5fe",
        "masks": "35:f4279caad3c09a9f",
        "metadata": "1:24e03e994a0093a8",
        "chexpert": "1:92ea2af31c9fa51a",
        "ground_truth": "1:7a621e7adc4de4fb",
        "split": "1:4865105844a8ab2a",
        "rois": "1:11545d39ff423a66",
        "shortcut": "1:f1216f312e9ace5d",
        "report_style": "0:e3b0c44298fc1c14",
        "corpus": "1:a42cd32199326c83",
        "manifest": "84b81ce5d69442ef",
        "unlisted_files": "",
    },
    "experiment_knobs": {
        "images": "24:9788099765d54a4b",
        "reports": "24:3551e50d90f963cf",
        "masks": "25:2ec9c6433bb2d3b0",
        "metadata": "1:cd9bd98c031ae1c1",
        "chexpert": "1:bd25f59d7eceb78b",
        "ground_truth": "1:fd9f92f487d97bfe",
        "split": "1:a65c8385168158dd",
        "rois": "1:b9394da0cce0eec4",
        "shortcut": "1:153e16387a0a4c85",
        "report_style": "0:e3b0c44298fc1c14",
        "corpus": "1:a42cd32199326c83",
        "manifest": "ea405208619fe5ee",
        "unlisted_files": "",
    },
}


def _config(case: str) -> PhantomConfig:
    return PhantomConfig(n_studies=24, seed=3, image_size=64, corpus_mb=0.02, **CASES[case])


def digests(root: Path) -> dict[str, str]:
    out = {}
    for group, pattern in GROUPS.items():
        h = hashlib.sha256()
        files = sorted(root.glob(pattern))
        for path in files:
            h.update(str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        out[group] = f"{len(files)}:{h.hexdigest()[:16]}"
    manifest = json.loads((root / "phantom.json").read_text())
    manifest.pop("config")
    out["manifest"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    listed = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    grouped = {str(p.relative_to(root)) for pattern in GROUPS.values() for p in root.glob(pattern)} | {"phantom.json"}
    out["unlisted_files"] = ",".join(sorted(listed - grouped))  # a new side file shows here
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_phantom_files_keep_their_digests(case, tmp_path):
    synthesize(_config(case), tmp_path)
    got = digests(tmp_path)
    assert got == EXPECTED[case], f"phantom output changed for {case!r}; new digests: {json.dumps(got, indent=1)}"


if __name__ == "__main__":  # print the digests of the current code
    import tempfile

    result = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            synthesize(_config(case), tmp)
            result[case] = digests(Path(tmp))
    json.dump(result, sys.stdout, indent=4)
    print()
