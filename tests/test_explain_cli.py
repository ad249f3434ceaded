"""The command line a new user meets: ``kdistill data --help`` (and teacher, student) list their
subcommands, every option of every command has help text, and ``kdistill run`` ends with the
headline figures and where the eval summary and the explained reports are."""
from __future__ import annotations

import argparse
import importlib
import re

import pytest

from kdistill.cli import COMMANDS, main
from kdistill.pipeline import headline_table


@pytest.mark.parametrize("group", ["data", "teacher", "student"])
def test_a_command_group_lists_its_subcommands(group, capsys):
    assert main([group, "--help"]) == 0
    out = capsys.readouterr().out
    subs = [words[1] for words, _, _ in COMMANDS if words[0] == group and len(words) > 1]
    assert subs and all(f"  {s} " in out for s in subs)
    assert main([group]) == 2 and f"kdistill {group} SUBCOMMAND" in capsys.readouterr().err
    assert main([group, "nonsense"]) == 2 and "unknown subcommand 'nonsense'" in capsys.readouterr().err


class _Parsed(Exception):
    pass


def test_every_option_of_every_command_has_help_text(monkeypatch):
    def capture(self, *args, **kwargs):
        raise _Parsed(self)

    for name in ("parse_args", "parse_intermixed_args", "parse_known_args"):
        monkeypatch.setattr(argparse.ArgumentParser, name, capture)
    missing = {}
    for words, module, _ in COMMANDS:
        with pytest.raises(_Parsed) as caught:
            importlib.import_module(module).main([], prog=" ".join(words))
        parser = caught.value.args[0]
        bare = [a.option_strings or [a.dest] for a in parser._actions
                if not a.help and not isinstance(a, argparse._HelpAction)]
        if bare:
            missing[" ".join(words)] = bare
    assert missing == {}


def test_the_run_ends_with_headline_figures_and_the_paths_to_read(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.md").write_text("# summary")
    outputs = {"eval": {"auc_micro_14": 0.90423, "chexpert_rules_f1/micro_14": 0.4579,
                        "rationale_consistency/f1": 0.612, "metrics": str(tmp_path / "eval" / "metrics.json"),
                        "baseline/constant_prevalence/auc_micro_14": 0.7542, "saliency/attention/energy_pointing_game": 0.5409,
                        "saliency/attention/chance_energy": 0.045},
               "explain": {"index": "runs/demo/explain/index.html", "reports_ended": 0.875}}
    table = headline_table(outputs)
    lines = [line.split() for line in table.splitlines()]
    assert ["micro-AUC,", "14", "findings", "(eval", "split)", "0.904"] in lines
    assert ["label", "F1", "of", "the", "reports", "(chexpert_rules_f1,", "micro,", "14)", "0.458"] in lines
    assert lines[4][-1] == "0.612" and lines[5][-1] == "88%"
    assert lines[6][-1] == "0.754" and lines[7][-2:] == ["0.541", "(0.045)"]
    assert ["eval", "summary", str(tmp_path / "eval" / "summary.md")] in lines
    assert ["explained", "reports", "runs/demo/explain/index.html"] in lines
    chexbert = headline_table({"eval": {"chexbert_f1/micro_14": 0.5, "chexpert_rules_f1/micro_14": 0.4}})
    assert re.search(r"\(chexbert_f1, micro, 14\)\s+0\.500", chexbert) and "n/a (explain did not run)" in chexbert
    assert headline_table({}).count("n/a") == 8
