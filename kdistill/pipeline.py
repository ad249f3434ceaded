"""``kdistill run CONFIG``: every stage of one YAML in order, into one run folder.

A stage is a module with a config dataclass (named in ``STAGES``: ``StudentTrainConfig`` for the
``student`` stage, ...) and ``run_stage(cfg, ctx) -> dict`` (the figures it wants in
``summary.json``). A finished stage leaves ``.stage.json`` in its
folder with a hash of its config and of every upstream stage's hash; a rerun with the same
hash is skipped, a changed upstream reruns everything after it.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from kdistill import config as cfglib
from kdistill.log import setup_logging

log = logging.getLogger("kdistill.run")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # also the config section
    module: str
    config: str  # the module's config dataclass
    folder: str  # relative to the run folder
    needs: tuple[str, ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("data", "kdistill.data.stage", "DataConfig", "data"),
    Stage("prepare", "kdistill.data.prepare", "PrepareConfig", "prepared", ("data",)),
    Stage("teacher_pretrain", "teacher.pretrain", "TeacherPretrainConfig", "teacher/base", ("data",)),
    Stage("teacher_train", "teacher.train", "TeacherTrainConfig", "teacher", ("teacher_pretrain",)),
    Stage("teacher_generate", "teacher.generate", "TeacherGenerateConfig", "rationales", ("data", "teacher_train")),
    Stage("student", "student.train", "StudentTrainConfig", "student", ("prepared_or_data", "teacher_generate")),
    Stage("eval", "eval.run", "EvalConfig", "eval", ("student",)),
    Stage("explain", "student.explain", "ExplainConfig", "explain", ("student",)),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
# Stages that read report text: skipped on a source without reports (CheXpert, NIH).
TEXT_STAGES = ("teacher_pretrain", "teacher_train", "teacher_generate")
MARKER = ".stage.json"


@dataclasses.dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    stages: list[str] | None = None  # None: all, in order
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    prepare: dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher_pretrain: dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher_train: dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher_generate: dict[str, Any] = dataclasses.field(default_factory=dict)
    student: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    explain: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        for name in self.stages or ():
            if name not in STAGE_NAMES:
                raise ValueError(f"unknown stage {name!r} in 'stages'; known: {', '.join(STAGE_NAMES)}")


@dataclasses.dataclass
class RunContext:
    """What a stage knows of the run: where things are and what upstream stages returned."""

    run_dir: Path
    name: str
    seed: int
    outputs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / _by_name(stage).folder

    @property
    def data_root(self) -> Path:
        """The dataset root: the phantom written by the data stage, or the user's own."""
        return Path(self.outputs.get("data", {}).get("root", self.stage_dir("data")))

    @property
    def data(self):
        """The run's dataset as a ``kdistill.data.sources.DataSource``: every stage loads its
        studies through it."""
        from kdistill.data.sources import open_source

        return open_source(self.outputs.get("data", {}).get("source", "mimic"), self.data_root)


def _by_name(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(name)


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Load and fully validate a run config: the top level and every stage's section."""
    run_cfg = cfglib.load(RunConfig, path, overrides)
    for stage in STAGES:
        stage_config(stage, run_cfg, source=str(path))
    return run_cfg


def stage_config(stage: Stage, run_cfg: RunConfig, source: str) -> Any:
    module = importlib.import_module(stage.module)
    return cfglib.from_dict(getattr(module, stage.config), getattr(run_cfg, stage.name), source=source,
                            prefix=stage.name)


UP_TO_DATE = "skipped (up to date)"
NO_TEXT = "skipped: the data source has no report text"


def run(run_cfg: RunConfig, run_dir: Path, source: str = "<config>", force: bool = False) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(file=run_dir / "run.log")
    cfglib.write_text_atomic(run_dir / "config.yaml", _yaml(cfglib.to_dict(run_cfg)))
    ctx = RunContext(run_dir=run_dir, name=run_cfg.name, seed=run_cfg.seed)
    wanted = run_cfg.stages or list(STAGE_NAMES)
    hashes: dict[str, str] = {}
    status: dict[str, str] = {}
    started = time.time()
    for stage in STAGES:
        status[stage.name] = _run_stage(stage, run_cfg, ctx, wanted, status, hashes, source, force)
    result = {"name": run_cfg.name, "stages": status, "outputs": ctx.outputs, "wall_s": round(time.time() - started, 1)}
    cfglib.write_text_atomic(run_dir / "summary.json", json.dumps(result, indent=2, default=str) + "\n")
    return result


def _run_stage(stage: Stage, run_cfg: RunConfig, ctx: RunContext, wanted: list[str], status: dict[str, str],
               hashes: dict[str, str], source: str, force: bool) -> str:
    """Run one stage, or say why not; returns its status. A stage whose config and upstream are
    unchanged since it finished is skipped; one that needs report text is skipped, by name, on a
    source without reports (the stages after it run without its outputs)."""
    if stage.name not in wanted:
        return "not selected"
    if stage.name in TEXT_STAGES and not ctx.outputs.get("data", {}).get("has_reports", True):
        log.info("stage %s: %s", stage.name, NO_TEXT)
        return NO_TEXT
    needs = [n for n in _needs(stage) if n in wanted and status.get(n) != NO_TEXT]
    blocked = [n for n in needs if status.get(n) not in ("done", UP_TO_DATE)]
    if blocked:
        log.warning("stage %s: not run, it needs %s", stage.name, ", ".join(blocked))
        return f"not run: needs {', '.join(blocked)}"
    cfg = stage_config(stage, run_cfg, source)
    digest = cfglib.config_hash({"stage": cfglib.to_dict(cfg), "seed": run_cfg.seed,
                                 "upstream": {n: hashes.get(n) for n in needs}})
    hashes[stage.name] = digest
    out = ctx.stage_dir(stage.name)
    marker = out / MARKER
    previous = json.loads(marker.read_text()) if marker.is_file() else {}
    if not force and previous.get("hash") == digest and previous.get("state", "done") == "done":
        ctx.outputs[stage.name] = previous.get("summary", {})
        log.info("stage %s: up to date, skipped", stage.name)
        return UP_TO_DATE
    if previous and (force or previous.get("hash") != digest):
        # Outputs of another config are stale: a stage must not resume from them. An
        # interrupted run of the same config (state "running") keeps its partial outputs.
        _clear_stage_folder(out, ctx.run_dir)
        log.info("stage %s: config changed, cleared %s", stage.name, out)
    log.info("stage %s: running -> %s", stage.name, out)
    out.mkdir(parents=True, exist_ok=True)
    cfglib.write_text_atomic(marker, json.dumps({"stage": stage.name, "hash": digest, "state": "running"}))
    t0 = time.time()
    summary = importlib.import_module(stage.module).run_stage(cfg, ctx) or {}
    summary = {**summary, "wall_s": round(time.time() - t0, 1)}
    ctx.outputs[stage.name] = summary
    cfglib.write_text_atomic(marker, json.dumps({"stage": stage.name, "hash": digest, "state": "done",
                                                 "summary": summary}, indent=2, default=str))
    log.info("stage %s: done in %.1fs", stage.name, summary["wall_s"])
    return "done"


def _clear_stage_folder(out: Path, run_dir: Path) -> None:
    """Empty a stage's folder, keeping the folders of other stages nested in it (teacher/base)."""
    import shutil

    nested = {(run_dir / s.folder).resolve() for s in STAGES} - {out.resolve()}
    for entry in out.iterdir():
        if entry.resolve() in nested:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _needs(stage: Stage) -> list[str]:
    # The student reads the prepared cache when that stage ran, else the raw dataset.
    out = []
    for n in stage.needs:
        out.extend(["data", "prepare"] if n == "prepared_or_data" else [n])
    return out


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def main(argv: list[str] | None = None, prog: str = "kdistill run") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Run every stage of CONFIG in order into one run folder.")
    parser.add_argument("config", help="YAML run config (e.g. configs/demo.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. student.max_steps=50")
    parser.add_argument("--out", help="run folder (default runs/<config name>/)")
    parser.add_argument("--force", action="store_true", help="rerun stages even when up to date")
    args = parser.parse_intermixed_args(argv)
    run_cfg = load_run_config(args.config, args.overrides)
    run_dir = Path(args.out or Path("runs") / run_cfg.name)
    result = run(run_cfg, run_dir, source=args.config, force=args.force)
    width = max(len(n) for n in result["stages"])
    print(f"run folder: {run_dir}")
    for name, state in result["stages"].items():
        print(f"  {name:<{width}}  {state}")
    print(headline_table(result["outputs"]))
    return 0


def headline_table(outputs: dict[str, dict[str, Any]]) -> str:
    """The end-of-run summary: headline figures and where to read more, from the stages' summaries
    (what ``summary.json`` holds under "outputs"); a figure a stage did not produce reads n/a."""
    ev, ex = outputs.get("eval") or {}, outputs.get("explain") or {}
    labeler = "chexbert_f1" if "chexbert_f1/micro_14" in ev else "chexpert_rules_f1"

    def fmt(value: Any, percent: bool = False) -> str:
        if not isinstance(value, (int, float)) or value != value:
            return "n/a"
        return f"{100 * value:.0f}%" if percent else f"{value:.3f}"

    rows = [("micro-AUC, 14 findings (eval split)", fmt(ev.get("auc_micro_14"))),
            (f"label F1 of the reports ({labeler}, micro, 14)", fmt(ev.get(f"{labeler}/micro_14"))),
            ("rationale consistency F1 (labeler vs study labels)", fmt(ev.get("rationale_consistency/f1"))),
            ("explained reports that end with a full sentence", fmt(ex.get("reports_ended"), percent=True))]
    metrics = ev.get("metrics")
    summary_md = Path(metrics).with_name("summary.md") if metrics else None
    paths = [("eval summary", str(summary_md) if summary_md and summary_md.is_file() else "n/a (eval did not run)"),
             ("explained reports", str(ex["index"]) if ex.get("index") else "n/a (explain did not run)")]
    width = max(len(name) for name, _ in rows + paths)
    lines = ["", "headline figures:"] + [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines + [""] + [f"  {name:<{width}}  {value}" for name, value in paths])
