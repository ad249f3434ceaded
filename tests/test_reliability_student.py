"""Hostile inputs to the student and to eval: batches without a usable rationale, damaged
checkpoints, caches of another dataset, an empty dataset, predictions files in other encodings,
NaN probabilities, and outputs written over folders kdistill did not write."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import student
from eval import run as R
from eval.predictions import predictions_from_checkpoint, read_predictions
from fixtures.kd_data.tree import build_tree
from fixtures.logging_reset import console_logging_per_test  # noqa: F401  (autouse)
from kdistill import cli
from kdistill import config as cfglib
from kdistill.errors import DataError
from kdistill.labels import FINDINGS
from kdistill.locks import LockedError
from student import checkpoint as ckpt
from student.synthetic import TINY_MODEL, make_prepared, make_rationales, make_tokenizer
from student.train import StudentTrainConfig, train
from student.train_data import build_datasets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    prep = make_prepared(16, 8, size=32)  # train, validate (8) and test studies with the cache's columns
    return prep, make_tokenizer(prep), make_rationales(prep)



def _cfg(**kw):
    base = {"model": {**TINY_MODEL, "embedding_pool": "prompt"}, "batch_size": 8, "max_steps": 2, "eval_every": 1,
            "save_every": 0, "warmup_steps": 1, "log_every": 1, "cpu": True, "lr": 3e-3, "num_threads": 1,
            "tensorboard": False}
    return cfglib.from_dict(StudentTrainConfig, cfglib.merge(base, kw))


# ----------------------------------------------------------------------------- rationales

def test_a_rationale_batch_without_any_text_still_has_a_position_after_the_prompt(toy):
    from student.text import IGNORE_INDEX, TokenSpec

    spec = TokenSpec(toy[1], "<report>", "<rationale>")
    prompt = len(spec.prompts["rationale"])
    batch = spec.batch("rationale", [None, None], max_len=24)
    assert batch["ids"].shape == (2, prompt + 1)
    assert (batch["labels"] == IGNORE_INDEX).all() and batch["mask"].sum(1).tolist() == [prompt, prompt]
    with_text = spec.batch("rationale", [None, [5, 6, 7]], max_len=24)
    assert with_text["ids"].shape == (2, prompt + 4)  # unchanged when a row has a text (+ eos)


def test_a_batch_with_no_usable_rationale_trains_one_step_with_zero_distillation(toy, tmp_path):
    prep, tok, rat = toy
    val = set(prep["validate"]["study_id"])
    flagged = rat.map(lambda r: {"consistent": r["study_id"] not in val})  # no validation study keeps one
    cfg = _cfg()
    data = build_datasets(cfg, prep, tok, flagged)
    assert not data.validate.has_rationale.any() and data.train.has_rationale.all()
    from student.data import Collate
    from student.losses import student_loss
    from student.model import create_student

    torch.manual_seed(0)
    model = create_student(data.model_cfg, tok)
    collate = Collate(model.tokens, model.image_size, data.model_cfg.max_text_len, True)
    batch = collate([data.validate[i] for i in range(4)])
    out = model(batch["images"], batch["report_ids"], batch["rationale_ids"], batch["rationale_mask"], True)
    loss, terms = student_loss(out, batch, cfg.loss)
    assert terms["kd"].item() == 0.0 and terms["emb"].item() == 0.0  # no rationale: no distillation
    assert terms["cls"].item() > 0 and terms["rep"].item() > 0 and torch.isfinite(loss)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss.backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # and the whole loop, whose sanity pass runs on those validation batches first
    metrics = train(cfg, tmp_path / "s", prep, tok, flagged)
    assert metrics["steps"] == 2 and metrics["rationales"]["missing_rationale"] == 0


def test_a_rationale_cache_of_another_dataset_is_named_as_such(toy, tmp_path):
    prep, tok, rat = toy
    other = rat.map(lambda r: {"study_id": "9" + r["study_id"]})
    with pytest.raises(DataError, match=r"rat: the rationale cache's study ids do not match the prepared cache's "
                                        r"\(prep\): none of its 32 studies"):
        build_datasets(_cfg(), prep, tok, other, rationale_path="rat", prepared_path="prep")
    inconsistent = rat.map(lambda r: {"consistent": False})
    with pytest.raises(DataError, match="all 16 rationales of the training studies are inconsistent"):
        build_datasets(_cfg(), prep, tok, inconsistent, rationale_path="rat")


def test_an_empty_dataset_is_a_data_error_naming_the_cache(toy):
    prep, tok, rat = toy
    import datasets

    empty = datasets.DatasetDict({k: v.select([]) if k == "train" else v for k, v in prep.items()})
    with pytest.raises(DataError, match=r"prep: the prepared cache's 'train' split is empty \(train: 0, validate: 8"):
        build_datasets(_cfg(), empty, tok, rat, prepared_path="prep")


def test_student_train_refuses_a_teacher_folder_and_leaves_it_unchanged(toy, tmp_path):
    prep, tok, rat = toy
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    files = {"config.json": '{"model_type": "llama"}', "model.safetensors": "teacher weights", "tokenizer.json": "{}"}
    for name, text in files.items():
        (teacher / name).write_text(text)
    with pytest.raises(DataError, match=r"teacher: exists, is not empty \(config.json, model.safetensors, "
                                        r"tokenizer.json\) and is not a kdistill student checkpoint folder"):
        train(_cfg(), teacher, prep, tok, rat)
    assert {p.name: p.read_text() for p in teacher.iterdir()} == files
    # its own folder is trained into again; overwrite=True takes the teacher's
    train(_cfg(max_steps=1), tmp_path / "s", prep, tok, rat)
    train(_cfg(max_steps=1), tmp_path / "s", prep, tok, rat)
    train(_cfg(max_steps=1), teacher, prep, tok, rat, overwrite=True)
    assert (teacher / "training_config.json").is_file()


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture()
def checkpoint(toy, tmp_path):
    from student import StudentConfig, create_student

    torch.manual_seed(0)
    cfg = cfglib.from_dict(StudentConfig, TINY_MODEL)
    folder = tmp_path / "student"
    model = create_student(cfg, toy[1])
    ckpt.save_weights(model.cfg, model.state_dict(), folder)  # model.cfg records the vocabulary it was built with
    ckpt.save_tokenizer(toy[1], folder)
    student.load(folder)  # whole, it loads
    return folder


def test_a_truncated_or_corrupt_checkpoint_is_a_data_error(checkpoint):
    weights = checkpoint / ckpt.WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[:1000])
    with pytest.raises(DataError, match="model.safetensors: truncated or corrupt safetensors file"):
        student.load(checkpoint)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="model.safetensors: truncated or corrupt safetensors file"):
        student.load(checkpoint)


def test_weights_of_another_width_and_nan_weights_are_data_errors(checkpoint):
    config = json.loads((checkpoint / ckpt.CONFIG).read_text())
    (checkpoint / ckpt.CONFIG).write_text(json.dumps({**config, "decoder_width": 48}))
    with pytest.raises(DataError, match=r"model.safetensors: weights do not fit config.json .*size mismatch for"):
        student.load(checkpoint)
    (checkpoint / ckpt.CONFIG).write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    state = load_file(str(checkpoint / ckpt.WEIGHTS))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name][0] = float("nan")
    save_file(state, str(checkpoint / ckpt.WEIGHTS))
    with pytest.raises(DataError, match=f"non-finite weights .* in {name}"):
        student.load(checkpoint)


def test_a_non_json_thresholds_file_is_a_data_error(checkpoint):
    (checkpoint / "thresholds.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(DataError, match="thresholds.json: not valid JSON"):
        student.load(checkpoint)


def test_non_finite_probabilities_and_pixels_are_refused_before_any_file(tmp_path):
    from eval.references import ReferenceSet

    class NanModel:
        image_size = (8, 8)

        def predict(self, images, **_):
            probs = np.full((len(images), 14), 0.5)
            probs[0, 3] = np.nan
            return {"probs": probs, "reports": ["x"] * len(images), "rationales": [""] * len(images)}

    ref = ReferenceSet(source="ref", split="test", study_ids=["s1", "s2"], labels=np.zeros((2, 14)),
                       reports=["a", "b"], image_batches=lambda rows, bs, size: iter([np.zeros((2, 8, 8), np.uint8)]))
    import student as student_pkg

    real = student_pkg.load
    student_pkg.load = lambda path: NanModel()
    try:
        with pytest.raises(DataError, match=r"ckpt: the model gave non-finite probabilities for 1 studies \(e.g. s1\)"):
            predictions_from_checkpoint(Path("ckpt"), ref)
    finally:
        student_pkg.load = real
    from student.data import to_float_images

    image = np.zeros((8, 8), np.float32)
    image[2, 2] = np.inf
    with pytest.raises(DataError, match="image 1 of the batch has 1 non-finite pixel values"):
        to_float_images([np.zeros((8, 8), np.float32), image], (8, 8))


# ----------------------------------------------------------------------------- eval

def _predictions_csv(path: Path, encoding: str) -> Path:
    rows = ["study_id," + ",".join(FINDINGS) + ",report", "59999999," + ",".join(["0.5"] * 14) + ",Épanchement café"]
    path.write_text("\n".join(rows) + "\n", encoding=encoding)
    return path


@pytest.mark.parametrize("encoding, said", [("latin-1", r"byte 0xc9 at offset \d+ is not UTF-8 \(latin-1"),
                                            ("utf-16", "it looks like UTF-16")])
def test_a_predictions_csv_that_is_not_utf8_is_one_line_naming_the_file(tmp_path, capsys, encoding, said):
    root = build_tree(tmp_path / "t")
    path = _predictions_csv(tmp_path / "p.csv", encoding)
    with pytest.raises(DataError, match=f"p.csv: not UTF-8 text: {said}"):
        read_predictions(path)
    assert cli.main(["eval", "--predictions", str(path), "--data", str(root), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith(f"kdistill eval: error: {path}: not UTF-8 text")
    assert read_predictions(_predictions_csv(tmp_path / "ok.csv", "utf-8-sig")).study_ids == ["59999999"]


def test_eval_outputs_of_the_wrong_type_and_foreign_folders_are_refused(tmp_path, checkpoint):
    root = build_tree(tmp_path / "t")
    preds = _predictions_csv(tmp_path / "p.csv", "utf-8")
    base = ["eval", "--predictions", str(preds), "--data", str(root), "n_bootstrap=2"]
    with pytest.raises(DataError, match="is a folder; --predictions takes a CSV or JSONL file"):
        read_predictions(tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="afile: exists and is a file"):
        R.main(base[1:] + ["--out", str(tmp_path / "afile")])
    out = tmp_path / "o"
    (out / "metrics.json").mkdir(parents=True)
    (out / "summary.md").write_text("an earlier summary")
    with pytest.raises(DataError, match="metrics.json: is a folder; a file is written here"):
        R.main(base[1:] + ["--out", str(out)])
    # a student checkpoint has a metrics.json but is no evaluation folder: left alone
    (checkpoint / "metrics.json").write_text('{"steps": 3}')
    with pytest.raises(DataError, match="not a kdistill evaluation folder"):
        R.main(base[1:] + ["--out", str(checkpoint)])
    assert json.loads((checkpoint / "metrics.json").read_text()) == {"steps": 3}
    assert R.main(base[1:] + ["--out", str(tmp_path / "fresh")]) == 0
    assert R.main(base[1:] + ["--out", str(tmp_path / "fresh")]) == 0  # its own output, rewritten


# ----------------------------------------------------------------------------- the rationale cache

_CHECK = """
import sys
from pathlib import Path
from teacher import cache
cache.check_metadata(Path(sys.argv[1]), {"teacher_id": "t"}, force=False)
"""


def test_rationale_cache_bad_shard_foreign_folder_and_a_second_writer(tmp_path):
    import os

    from teacher import cache

    out = tmp_path / "rationales"
    cache.check_metadata(out, {"teacher_id": "t"}, force=False)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-c", _CHECK, str(out)], capture_output=True, text=True, env=env)
        assert proc.returncode != 0 and "LockedError" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    finally:
        cache.release(out)
    (out / "shards").mkdir()
    (out / "shards" / "r000-000000.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match="r000-000000.parquet: unreadable rationale shard"):
        cache.done_keys(out)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "dataset").mkdir()
    with pytest.raises(DataError, match="not a kdistill rationale cache"):
        cache.check_metadata(user, {"teacher_id": "t"}, force=True)
    assert [p.name for p in user.iterdir()] == ["dataset"]
    with pytest.raises(LockedError.__mro__[1]):  # released after the refusal: a new writer may come
        cache.check_metadata(user, {"teacher_id": "t"}, force=True)


def test_a_student_folder_that_maps_its_tokenizer_to_its_own_code_never_runs_it(checkpoint):
    """A checkpoint's tokenizer_config.json with an ``auto_map`` to a Python file of the folder
    (which would write a marker when imported): ``student.load`` refuses it or loads the plain
    tokenizer, and the file never runs (the student has no trust_remote_code switch at all)."""
    marker = checkpoint / "MARKER"
    (checkpoint / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('remote code ran')\n"
        "from transformers import PreTrainedTokenizerFast\nclass EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    config_path = checkpoint / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    config_path.write_text(json.dumps(config))
    try:
        model = student.load(checkpoint)
        assert type(model.tokenizer).__name__ != "EvilTokenizer"
    except DataError as err:
        assert "tokenizer" in str(err)
    assert not marker.exists()
