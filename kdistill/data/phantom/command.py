"""``kdistill data synth``: write a phantom chest X-ray dataset in the MIMIC-CXR-JPG layout."""
from __future__ import annotations

import argparse
import json

from kdistill import config as cfglib
from kdistill.data.phantom.config import PhantomConfig


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write a phantom chest X-ray dataset (images, reports, CheXpert labels, expert regions, "
        "teacher corpus) in the MIMIC-CXR-JPG v2 layout.",
    )
    parser.add_argument("--out", required=True, help="dataset root to write")
    parser.add_argument("--n", type=int, help="number of studies (n_studies)")
    parser.add_argument("--seed", type=int, help="random seed; the same seed gives identical files")
    parser.add_argument("--size", type=int, help="stored image side in pixels (image_size, 64..1024)")
    parser.add_argument("--workers", type=int, help="processes (output does not depend on it)")
    parser.add_argument("--config", help="YAML file with PhantomConfig keys (top level, a 'phantom' section, or a run config's data.phantom)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. difficulty=0.7 shortcut_finding=Pneumothorax "
                        "shortcut_splits='{train: 0.9, test: 0.1}' rois_fraction=0.05 report_style.implied_share=0.3")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even when it holds files that are not a phantom dataset")
    return parser


def load_config(args: argparse.Namespace) -> PhantomConfig:
    data: dict = {}
    source = "command line"
    if args.config:
        data = cfglib.read_yaml(args.config)
        source = args.config
        # Accept a PhantomConfig mapping, a {phantom: ...} file, or a whole run config (data.phantom).
        if isinstance(data.get("data"), dict) and isinstance(data["data"].get("phantom"), dict):
            data = data["data"]["phantom"]
        elif isinstance(data.get("phantom"), dict):
            data = data["phantom"]
    flags = {"n_studies": args.n, "seed": args.seed, "image_size": args.size, "workers": args.workers}
    data = cfglib.merge(data, {k: v for k, v in flags.items() if v is not None})
    if args.overrides:
        data = cfglib.merge(data, cfglib.parse_overrides(args.overrides))
    return cfglib.from_dict(PhantomConfig, data, source=source)


def main(argv: list[str] | None = None, prog: str = "kdistill data synth") -> int:
    args = build_parser(prog).parse_args(argv)
    cfg = load_config(args)
    from kdistill.data.phantom.synth import synthesize

    summary = synthesize(cfg, args.out, progress=not args.quiet, overwrite=args.overwrite)
    print(json.dumps({k: summary[k] for k in ("root", "n_studies", "n_rois", "splits", "prevalence", "corpus_docs", "wall_s")}, indent=2))
    return 0
