"""One way to configure every stage command: ``--config FILE [--section NAME]`` and ``key=value``
overrides of that stage's config dataclass. Flags are left for paths and for what is not a
config field.

``--config`` takes a run config (the stage's section is read: ``student`` for ``kdistill student
train``) or a file holding only that stage's keys; ``--section`` picks another section.
"""
from __future__ import annotations

import argparse
import warnings
from typing import Any, Mapping, TypeVar

from kdistill import config as cfglib

T = TypeVar("T")


def add_config_arguments(parser: argparse.ArgumentParser, section: str, example: str = "") -> None:
    parser.add_argument("--config", help=f"YAML: a run config (its '{section}' section is read) or a file of "
                                         f"{section} keys only")
    parser.add_argument("--section", help=f"section of --config to read (default: '{section}' when the file has "
                                          "one, else the whole file)")
    hint = f", e.g. {example}" if example else ""
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"overrides of the {section} config (dotted keys for nested ones){hint}")


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True, what: str = "") -> None:
    """``--data-root ROOT`` and ``--source NAME`` (a ``kdistill.data.sources`` name; the phantom
    loads as ``mimic``)."""
    parser.add_argument("--data-root", required=required,
                        help="dataset root" + (f" ({what})" if what else ""))
    parser.add_argument("--source", default="mimic",
                        help="layout of the dataset root: mimic (MIMIC-CXR-JPG and the phantom, the default), "
                             "chexpert, ... (kdistill.data.sources)")
    parser.add_argument("--reports-root", help="mimic: the unzipped mimic-cxr-reports folder (MIMIC-CXR-JPG has no texts)")
    parser.add_argument("--labels", choices=("chexpert", "negbio"), help="mimic: the label file to read (default chexpert)")


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """The loader options given by ``--reports-root`` / ``--labels`` (mimic's)."""
    opts = {"reports_root": getattr(args, "reports_root", None), "labels": getattr(args, "labels", None)}
    return {k: v for k, v in opts.items() if v is not None}


def data_source(args: argparse.Namespace):
    """The ``DataSource`` of ``--data-root`` / ``--source``, or None when no root was given."""
    from kdistill.data.sources import open_source

    if getattr(args, "data_root", None) is None:
        return None
    try:
        return open_source(args.source, args.data_root, **source_options(args))
    except ValueError as err:
        raise cfglib.ConfigError(f"--source: {err}") from None


def stage_config(cls: type[T], args: argparse.Namespace, section: str,
                 flags: Mapping[str, Any] | None = None, deprecated: Mapping[str, str] | None = None) -> T:
    """The stage config from ``args`` (see :func:`add_config_arguments`).

    ``flags``: config keys given by dedicated flags (applied before ``key=value`` overrides;
    ``None`` values are left out). ``deprecated``: flag -> config key for flags kept one more
    release; each one used is warned about, naming the key that replaces it.
    """
    chosen = args.section
    if chosen is None and args.config is not None and section in cfglib.read_yaml(args.config):
        chosen = section
    data: dict[str, Any] = {}
    source = "defaults"
    if args.config is not None:
        data = cfglib.read_yaml(args.config)
        source = str(args.config)
        if chosen is not None:
            data = data.get(chosen) or {}
            if not isinstance(data, dict):
                raise cfglib.ConfigError(f"{args.config}: section '{chosen}' must be a mapping")
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    for flag, key in (deprecated or {}).items():
        if key in given:
            warnings.warn(f"{flag} is deprecated, use the override {key}=VALUE; the flag is accepted until "
                          "the next release", FutureWarning, stacklevel=2)
    data = cfglib.merge(data, _nest(given))
    if args.overrides:
        data = cfglib.merge(data, cfglib.parse_overrides(args.overrides))
    return cfglib.from_dict(cls, data, source=source, prefix=chosen or "")


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out
