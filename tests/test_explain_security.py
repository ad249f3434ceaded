"""Issue 21, item 1: explain writes only inside ``--out``, one folder per study. Faults are
planted: study ids ``..`` / ``.`` / absolute / traversing in a prepared cache (ids come from the
dataset's CSVs), an image named ``...png``, two files that sanitise alike, a symlink in ``--out``."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from explain_support import KnownModel, gradient_images
from kdistill.errors import DataError
from student.explain import ExplainConfig, explain_batch, explain_files, explain_prepared
from student.explain.paths import OutsideOutput, inside, study_folder

HOSTILE_IDS = ["..", ".", "../escape", "/etc/passwd", "a/../../x", "..\\..\\win", "x" * 300, "ok", "ok.", "ok/"]


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_hostile_study_ids_from_a_prepared_cache_stay_inside_out_each_in_its_own_folder(tmp_path, monkeypatch):
    import datasets

    import student

    n = len(HOSTILE_IDS)
    images = gradient_images(n)
    labels = np.full((n, 14), np.nan, dtype=np.float32).tolist()
    split = datasets.Dataset.from_dict({"study_id": HOSTILE_IDS, "image": list(images), "labels": labels,
                                        "findings": ["f"] * n, "impression": ["i"] * n})
    datasets.DatasetDict({"test": split}).save_to_disk(str(tmp_path / "prepared"))
    monkeypatch.setattr(student, "load", lambda path: KnownModel())
    base = tmp_path / "work"
    out = base / "deep" / "out"
    out.mkdir(parents=True)
    (base / "deep" / "keep.txt").write_text("not explain's")
    before = _tree(base)
    summary = explain_prepared("ckpt", tmp_path / "prepared", out, ExplainConfig(max_studies=n))
    assert summary["n_studies"] == n
    assert [p for p in _tree(base) if not p.startswith("deep/out")] == [p for p in before if not p.startswith("deep/out")]
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == n  # ok, ok. and ok/ sanitise alike but keep their own folders
    for folder in folders:
        assert folder.resolve().parent == out.resolve() and folder.name not in (".", "..")
        assert len(folder.name) <= 60 and (folder / "study.html").is_file() and (folder / "explanation.json").is_file()


def test_image_files_named_alike_or_dots_get_distinct_folders(tmp_path, monkeypatch):
    import student

    monkeypatch.setattr(student, "load", lambda path: KnownModel())
    paths = []
    for sub, name in (("a", "x.png"), ("b", "x.jpg"), ("c", "x.png"), ("d", "...png"), ("e", "..png")):
        (tmp_path / sub).mkdir()
        Image.fromarray(gradient_images(1)[0]).save(tmp_path / sub / name, format="PNG")
        paths.append(tmp_path / sub / name)
    out = tmp_path / "out"
    explain_files("ckpt", paths, out, ExplainConfig())
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 5 and len(set(folders)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d", "e", "out"]
    assert folders == sorted(study_folder(str(p), p.name) for p in paths)


def test_a_symlink_planted_in_out_is_refused_before_anything_is_written_through_it(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / study_folder("s1"))
    with pytest.raises(OutsideOutput, match="outside the output folder"):
        explain_batch(KnownModel(), gradient_images(1), ["s1"], out)
    assert list(outside.iterdir()) == []


def test_inside_accepts_the_folder_and_its_children_only(tmp_path):
    assert inside(tmp_path, tmp_path / "a" / "b.png") == (tmp_path / "a" / "b.png").resolve()
    for bad in (tmp_path / ".." / "x", tmp_path / "a" / ".." / ".." / "x", "/etc/passwd"):
        with pytest.raises(OutsideOutput):
            inside(tmp_path, bad)


def test_a_repeated_study_id_is_a_data_error_not_a_silent_overwrite(tmp_path):
    with pytest.raises(DataError, match="appears twice"):
        explain_batch(KnownModel(), gradient_images(2), ["s", "s"], tmp_path)


def test_folder_names_are_sanitised_and_unique_per_raw_id():
    names = [study_folder(s) for s in HOSTILE_IDS]
    assert len(set(names)) == len(names)
    assert all(n.replace("-", "").replace("_", "").isalnum() for n in names)
    assert study_folder("..").startswith("study-") and study_folder("55012345").startswith("55012345-")
