"""``kdistill run CONFIG``: every stage of one YAML in order, into one run folder.

A stage is a module with a config dataclass (named in ``STAGES``: ``StudentTrainConfig`` for the
``student`` stage, ...) and ``run_stage(cfg, ctx) -> dict`` (the figures it wants in
``summary.json``). A finished stage leaves ``.stage.json`` in its
folder with a hash of its config and of every upstream stage's hash, and a record of every file
it wrote (``kdistill.outputs.manifest``: sizes, hashes of small files, mtimes of big ones); a
rerun with the same hash whose files are all still as recorded is skipped, a changed upstream
reruns everything after it, and a stage whose files were deleted, truncated or replaced runs
again. A stage interrupted mid-way (state "running", same hash) keeps its partial outputs, so it
resumes from its own checkpoints.

One run at a time per folder: the run folder and each stage folder are locked
(``kdistill.locks``) while they are written, and a run folder that holds files but is not a
kdistill run folder (no ``.kdistill-run.json`` and no stage marker) is refused unless
``--overwrite``. ``summary.json`` records what the run's figures depend on besides the config
(library versions, torch's CPU capability and threads): the same config on the same machine
gives the same weights and metrics.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from kdistill import config as cfglib
from kdistill.io import nonfinite_to_none, write_json, write_text_atomic
from kdistill.locks import output_lock
from kdistill.log import setup_logging
from kdistill.outputs import BOOKKEEPING, claim_folder, manifest, manifest_problems, pop_overwrite

log = logging.getLogger("kdistill.run")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # also the config section
    module: str
    config: str  # the module's config dataclass
    folder: str  # relative to the run folder
    needs: tuple[str, ...] = ()
    # Optional stages run only when ``stages`` names them (few-shot and active learning are
    # experiments on the prepared cache, not steps every run wants).
    default: bool = True


STAGES: tuple[Stage, ...] = (
    Stage("data", "kdistill.data.stage", "DataConfig", "data"),
    Stage("prepare", "kdistill.data.prepare", "PrepareConfig", "prepared", ("data",)),
    Stage("teacher_pretrain", "teacher.pretrain", "TeacherPretrainConfig", "teacher/base", ("data",)),
    Stage("teacher_train", "teacher.train", "TeacherTrainConfig", "teacher", ("teacher_pretrain",)),
    Stage("teacher_generate", "teacher.generate", "TeacherGenerateConfig", "rationales", ("data", "teacher_train")),
    Stage("student", "student.train", "StudentTrainConfig", "student", ("prepared_or_data", "teacher_generate")),
    Stage("eval", "eval.run", "EvalConfig", "eval", ("student",)),
    Stage("explain", "student.explain", "ExplainConfig", "explain", ("student",)),
    Stage("fewshot", "student.fewshot", "FewShotConfig", "fewshot", ("prepare",), default=False),
    Stage("active", "student.active", "ActiveConfig", "active", ("prepare",), default=False),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
# Stages that read report text: skipped on a source without reports (CheXpert, NIH).
TEXT_STAGES = ("teacher_pretrain", "teacher_train", "teacher_generate")
MARKER = ".stage.json"
RUN_MARKER = ".kdistill-run.json"
# A run folder is recognised by its run marker, or (made before there was one) a stage marker.
RUN_MARKERS = (RUN_MARKER, f"*/{MARKER}", f"*/*/{MARKER}")
# Libraries whose versions the figures depend on (recorded in summary.json).
KEY_LIBRARIES = ("torch", "numpy", "accelerate", "transformers", "tokenizers", "datasets", "pyarrow", "safetensors",
                 "peft", "open_clip_torch", "timm", "pillow", "pydicom", "scipy", "scikit-learn")


@dataclasses.dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    stages: list[str] | None = None  # None: every default stage, in order (fewshot and active only when named)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    prepare: dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher_pretrain: dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher_train: dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher_generate: dict[str, Any] = dataclasses.field(default_factory=dict)
    student: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    explain: dict[str, Any] = dataclasses.field(default_factory=dict)
    fewshot: dict[str, Any] = dataclasses.field(default_factory=dict)
    active: dict[str, Any] = dataclasses.field(default_factory=dict)

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

        data = self.outputs.get("data", {})
        return open_source(data.get("source", "mimic"), self.data_root, **data.get("options", {}))


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


def run(run_cfg: RunConfig, run_dir: Path, source: str = "<config>", force: bool = False,
        overwrite: bool = False) -> dict[str, Any]:
    """Run the selected stages into ``run_dir`` (locked for the run; refused when it holds files
    but is not a run folder, unless ``overwrite``); returns summary.json's content."""
    run_dir = Path(run_dir)
    claim_folder(run_dir, "run folder", RUN_MARKERS, overwrite)
    with output_lock(run_dir, "run folder"):
        claim_folder(run_dir, "run folder", RUN_MARKERS, overwrite)
        return _run_locked(run_cfg, run_dir, source, force)


def _run_locked(run_cfg: RunConfig, run_dir: Path, source: str, force: bool) -> dict[str, Any]:
    setup_logging(file=run_dir / "run.log")
    if not (run_dir / RUN_MARKER).is_file():
        write_json(run_dir / RUN_MARKER, {"kind": "kdistill run folder", "name": run_cfg.name,
                                          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_text_atomic(run_dir / "config.yaml", _yaml(cfglib.to_dict(run_cfg)))
    ctx = RunContext(run_dir=run_dir, name=run_cfg.name, seed=run_cfg.seed)
    wanted = run_cfg.stages or [s.name for s in STAGES if s.default]
    hashes: dict[str, str] = {}
    status: dict[str, str] = {}
    started = time.time()
    for stage in STAGES:
        status[stage.name] = _run_stage(stage, run_cfg, ctx, wanted, status, hashes, source, force)
    result = {"name": run_cfg.name, "stages": status, "outputs": ctx.outputs, "wall_s": round(time.time() - started, 1),
              "environment": environment()}
    write_json(run_dir / "summary.json", nonfinite_to_none(result), default=str)
    return result


def environment() -> dict[str, Any]:
    """What one machine's figures depend on besides the config: interpreter, library versions,
    torch's CPU kernels (``get_cpu_capability``: AVX2 and AVX512 sum in other orders) and threads."""
    import platform
    from importlib import metadata

    import torch

    versions = {}
    for name in KEY_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["torch"] = torch.__version__  # with its build tag (+cu130, +cpu)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "libraries": versions,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def _run_stage(stage: Stage, run_cfg: RunConfig, ctx: RunContext, wanted: list[str], status: dict[str, str],
               hashes: dict[str, str], source: str, force: bool) -> str:
    """Run one stage, or say why not; returns its status. A stage whose config and upstream are
    unchanged since it finished, and whose files are as it left them, is skipped; one that needs
    report text is skipped, by name, on a source without reports (the stages after it run
    without its outputs)."""
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
    with output_lock(out, f"the {stage.name} stage's folder"):
        return _run_stage_locked(stage, cfg, ctx, digest, out, force)


def _run_stage_locked(stage: Stage, cfg: Any, ctx: RunContext, digest: str, out: Path, force: bool) -> str:
    marker = out / MARKER
    previous = _read_marker(marker)
    if not force and previous.get("hash") == digest and previous.get("state", "done") == "done":
        problems = _output_problems(out, previous)
        if not problems:
            ctx.outputs[stage.name] = previous.get("summary", {})
            log.info("stage %s: up to date, skipped", stage.name)
            return UP_TO_DATE
        # Its own outputs, damaged: they are not resumed from.
        log.warning("stage %s: its outputs are not as it left them (%s); running it again", stage.name,
                    "; ".join(problems))
        _clear_stage_folder(out, ctx.run_dir)
    elif previous and (force or previous.get("hash") != digest):
        # Outputs of another config are stale: a stage must not resume from them. An
        # interrupted run of the same config (state "running") keeps its partial outputs.
        _clear_stage_folder(out, ctx.run_dir)
        log.info("stage %s: config changed, cleared %s", stage.name, out)
    log.info("stage %s: running -> %s", stage.name, out)
    write_json(marker, {"stage": stage.name, "hash": digest, "state": "running"}, indent=None)
    t0 = time.time()
    summary = importlib.import_module(stage.module).run_stage(cfg, ctx) or {}
    summary = nonfinite_to_none({**summary, "wall_s": round(time.time() - t0, 1)})
    ctx.outputs[stage.name] = summary
    write_json(marker, {"stage": stage.name, "hash": digest, "state": "done", "summary": summary,
                        "outputs": manifest(out, exclude=_nested_folders(out, ctx.run_dir))}, default=str)
    log.info("stage %s: done in %.1fs", stage.name, summary["wall_s"])
    return "done"


def _read_marker(marker: Path) -> dict[str, Any]:
    """A stage marker's content; {} when there is none, and an unreadable one counts as made by
    another config (so its folder is cleared, not resumed from)."""
    if not marker.is_file():
        return {}
    try:
        blob = json.loads(marker.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        blob = None
    return blob if isinstance(blob, dict) else {"state": "unreadable"}


def _output_problems(out: Path, previous: dict[str, Any]) -> list[str]:
    if not isinstance(previous.get("outputs"), dict):
        return ["its marker holds no record of its files (written by an older kdistill)"]
    return manifest_problems(out, previous["outputs"])


def _nested_folders(out: Path, run_dir: Path) -> set[Path]:
    """Other stages' folders inside ``out`` (teacher/base inside teacher): not this stage's files."""
    return {(run_dir / s.folder).resolve() for s in STAGES} - {out.resolve()}


def _clear_stage_folder(out: Path, run_dir: Path) -> None:
    """Empty a stage's folder, keeping the folders of other stages nested in it (teacher/base)."""
    import shutil

    nested = _nested_folders(out, run_dir)
    for entry in out.iterdir():
        if entry.name in BOOKKEEPING:
            continue
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
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even when it holds files that are not a kdistill run folder")
    args = parser.parse_intermixed_args(argv)
    overwrite = pop_overwrite(args.overrides) or args.overwrite
    run_cfg = load_run_config(args.config, args.overrides)
    run_dir = Path(args.out or Path("runs") / run_cfg.name)
    result = run(run_cfg, run_dir, source=args.config, force=args.force, overwrite=overwrite)
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

    chance = ev.get("saliency/attention/chance_energy")
    energy = fmt(ev.get("saliency/attention/energy_pointing_game"))
    rows = [("micro-AUC, 14 findings (eval split)", fmt(ev.get("auc_micro_14"))),
            (f"label F1 of the reports ({labeler}, micro, 14)", fmt(ev.get(f"{labeler}/micro_14"))),
            ("rationale consistency F1 (labeler vs study labels)", fmt(ev.get("rationale_consistency/f1"))),
            ("explained reports that end with a full sentence", fmt(ex.get("reports_ended"), percent=True)),
            ("micro-AUC of a constant-prevalence predictor", fmt(ev.get("baseline/constant_prevalence/auc_micro_14"))),
            ("finding maps' energy in the expert region (uniform map)",
             energy if energy == "n/a" else f"{energy} ({fmt(chance)})")]
    metrics = ev.get("metrics")
    summary_md = Path(metrics).with_name("summary.md") if metrics else None
    paths = [("eval summary", str(summary_md) if summary_md and summary_md.is_file() else "n/a (eval did not run)"),
             ("explained reports", str(ex["index"]) if ex.get("index") else "n/a (explain did not run)")]
    width = max(len(name) for name, _ in rows + paths)
    lines = ["", "headline figures:"] + [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines + [""] + [f"  {name:<{width}}  {value}" for name, value in paths])
