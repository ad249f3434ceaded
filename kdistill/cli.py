"""The ``kdistill`` command: one entry point, one module per subcommand.

Each subcommand's module owns its argument parser (``main(argv, prog) -> int``) and is imported
only when that subcommand runs, so ``kdistill label`` never pays for importing torch.
"""
from __future__ import annotations

import importlib
import sys

from kdistill.config import ConfigError
from kdistill.errors import DataError
from kdistill.log import setup_logging

# (words, module, one-line help)
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("data", "synth"), "kdistill.data.phantom.command", "write a phantom chest X-ray dataset in the MIMIC-CXR-JPG layout"),
    (("data", "check"), "kdistill.data.check", "check a dataset root: counts, prevalence, missing/corrupt files"),
    (("data", "prepare"), "kdistill.data.prepare", "resize a dataset once into an Arrow cache for training"),
    (("data", "import-rois"), "kdistill.data.rois", "convert VinDr-CXR / ChestX-Det annotations to rois.jsonl"),
    (("label",), "kdistill.labeler.command", "label reports with the rule-based CheXpert-style labeler"),
    (("teacher", "pretrain"), "teacher.pretrain", "train a tokenizer and pretrain a small causal LM on the corpus"),
    (("teacher", "train"), "teacher.train", "LoRA-adapt a causal LM on the biomedical corpus"),
    (("teacher", "generate"), "teacher.generate", "write teacher rationales into the rationale cache"),
    (("student", "train"), "student.train", "train the student with accelerate"),
    (("student", "fewshot"), "student.fewshot", "episodic N-way K-shot prototypical learning, Grad-CAM Dice guided (EGxFSL)"),
    (("student", "active"), "student.active", "pool-based active learning curves: random, entropy, BALD, misalignment, xgal"),
    (("eval",), "eval.run", "score a checkpoint or a predictions file"),
    (("explain",), "student.explain", "write explained reports: per-study pages, a sortable index, JSON"),
    (("run",), "kdistill.pipeline", "run every stage of a config in order"),
]


def _group_usage(group: str) -> str:
    """The subcommands of a command group (``kdistill data``, ``teacher``, ``student``)."""
    lines = [f"usage: kdistill {group} SUBCOMMAND [options]", "", "subcommands:"]
    for words, _, text in COMMANDS:
        if len(words) > 1 and words[0] == group:
            lines.append(f"  {words[1]:<20}{text}")
    lines += ["", f"Run 'kdistill {group} SUBCOMMAND --help' for a subcommand's options."]
    return "\n".join(lines)


def _usage() -> str:
    lines = ["usage: kdistill COMMAND [SUBCOMMAND] [options]", "", "commands:"]
    for words, _, text in COMMANDS:
        lines.append(f"  {' '.join(words):<22}{text}")
    lines += ["", "Run 'kdistill COMMAND --help' for a command's options."]
    return "\n".join(lines)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from kdistill import __version__

        print(__version__)
        return 0
    for words, module, _ in sorted(COMMANDS, key=lambda c: -len(c[0])):
        if tuple(argv[: len(words)]) == words:
            prog = "kdistill " + " ".join(words)
            setup_logging()
            try:
                return int(importlib.import_module(module).main(argv[len(words):], prog=prog) or 0)
            except (DataError, ConfigError) as err:
                print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
                return 1
            except OSError as err:
                # The filesystem's answer about a named file (permission denied, disk full, no
                # such folder) is the user's to act on: one sentence, not a traceback. An
                # OSError without a file name is left to propagate (it is a bug to report).
                if err.filename is None:
                    raise
                where = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
                print(f"{prog}: error: {where}: {err.strerror or err}", file=sys.stderr)
                return 1
    groups = {words[0] for words, _, _ in COMMANDS if len(words) > 1}
    if argv[0] in groups:
        asked = len(argv) > 1 and argv[1] in ("-h", "--help")
        if not asked and len(argv) > 1:
            print(f"kdistill {argv[0]}: unknown subcommand {argv[1]!r}\n", file=sys.stderr)
        print(_group_usage(argv[0]), file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    print(f"kdistill: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
