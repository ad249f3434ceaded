"""``kdistill teacher pretrain``: the offline default teacher base.

Trains a byte-level BPE tokenizer on the corpus (saved in transformers format), builds a small
Llama from a JSON config (``teacher/configs/``) and pretrains it on the corpus: textbook and
rationale docs plus prompt -> rationale pairs. Mixing the pairs in matters: without them the
LoRA-adapted teacher named the right findings far less often on the phantom.

Output folder (the ``teacher_pretrain`` stage: ``teacher/base/``): ``config.json``,
``model.safetensors``, tokenizer files, ``pretrain.json`` (what was trained, losses, speed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from kdistill import config as cfglib
from kdistill.errors import DataError
from kdistill.training import cosine_schedule, set_num_threads
from teacher import corpus as corpuslib
from teacher import lm_data
from kdistill.labeler.consistency import default_label_fn
from teacher.modeling import SPECIAL_TOKENS, build_llama, count_parameters, resolve_config

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TeacherPretrainConfig:
    corpus: str | None = None  # default: <data root>/corpus/corpus.jsonl
    reports: bool = True  # train-split reports of the data root as the pairs' reports
    model_config: str = "llama_3m"  # name in teacher/configs/ or a JSON path
    vocab_size: int = 2000  # upper bound; a templated corpus yields fewer merges
    max_length: int = 384
    max_steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    pair_copies: int = 1  # times each prompt -> rationale pair is mixed in
    textbook: bool = False  # textbook docs as plain text besides the pairs (dilutes them at a fixed step budget)
    filter_inconsistent: bool = True  # drop rationale docs the labeler reads against their findings
    eval_fraction: float = 0.05
    seed: int = 0
    num_threads: int = 0  # torch CPU threads; 0 leaves torch's default
    log_every: int = 50

    RENAMED: ClassVar[dict] = {"steps": "max_steps", "threads": "num_threads"}

    def validate(self) -> None:
        if self.max_steps < 0 or self.batch_size < 1 or self.max_length < 16:
            raise ValueError("max_steps >= 0, batch_size >= 1 and max_length >= 16 are required")


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path | None = None):
    """Byte-level BPE (as GPT-2 / Llama-3) wrapped as a transformers fast tokenizer with
    bos/eos/pad/unk set; saved to ``out_dir`` so ``AutoTokenizer.from_pretrained`` loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, **SPECIAL_TOKENS)
    tok.padding_side = "left"  # generation pads on the left; training pads itself
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def pretrain(cfg: TeacherPretrainConfig, corpus_path: str | Path, out_dir: str | Path, label_fn=None,
             data=None) -> dict[str, Any]:
    """Tokenizer + small Llama pretrained on the corpus into ``out_dir``; returns the figures.
    ``label_fn`` (default: the project's labeler) checks rationale docs when filtering; ``data``
    (a ``kdistill.data.sources.DataSource``) gives the train-split reports for the prompts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    all_docs = corpuslib.read_corpus(corpus_path)
    docs, check = all_docs, {}
    if cfg.filter_inconsistent:
        check_file = out_dir / "corpus_check.json"
        docs, check = corpuslib.drop_inconsistent(all_docs, label_fn or default_label_fn(), corpus_path,
                                                  [check_file], write_to=check_file)
        log.info("corpus check: %d of %d rationale docs dropped (the labeler reads them against their findings)",
                 check["dropped_inconsistent"], check["rationale_docs"])
    train_docs, eval_docs = corpuslib.split_holdout(docs, cfg.eval_fraction, cfg.seed)
    # Rationale docs enter as pair targets (conditioned on their prompt), textbook docs as text:
    # the model learns the language and, above all, which rationale a findings line asks for.
    bank = corpuslib.load_report_bank(data) if cfg.reports else {}
    pairs = corpuslib.pair_examples(train_docs, cfg.seed, copies=cfg.pair_copies, reports=bank)
    texts = corpuslib.text_examples(train_docs, kinds=("textbook",)) if cfg.textbook else []
    tok = train_tokenizer([d["text"] for d in all_docs] + [p.prompt for p in pairs], cfg.vocab_size, out_dir)
    model = build_llama(resolve_config(cfg.model_config), len(tok), tok)
    model.config.max_position_embeddings = max(model.config.max_position_embeddings, cfg.max_length)
    n_params = count_parameters(model)
    log.info("pretraining a %.2fM-parameter Llama (vocab %d) on %d docs + %d pairs for %d steps",
             n_params / 1e6, len(tok), len(texts), len(pairs), cfg.max_steps)

    rows = lm_data.encode(texts + pairs, tok, cfg.max_length)
    eval_rows = lm_data.encode(corpuslib.text_examples(eval_docs, kinds=("textbook",) if cfg.textbook else ())
                               + corpuslib.pair_examples(eval_docs, cfg.seed + 1, reports=bank), tok, cfg.max_length)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = cosine_schedule(opt, cfg.warmup_steps, cfg.max_steps, floor=0.1, warmup_from_zero=False)
    model.train()
    stream = lm_data.infinite_batches(rows, cfg.batch_size, tok.pad_token_id, cfg.seed)
    tokens, first_loss, loss_value, started = 0, None, math.nan, time.time()
    for step in range(1, cfg.max_steps + 1):
        batch = next(stream)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        loss_value = loss.item()
        first_loss = loss_value if first_loss is None else first_loss
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            log.info("pretrain step %d/%d loss %.3f (%.0f tokens/s)", step, cfg.max_steps, loss_value,
                     tokens / max(time.time() - started, 1e-9))
    seconds = time.time() - started
    model.eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    result = {
        "params": n_params,
        "vocab_size": len(tok),
        "docs": len(texts),
        "pairs": len(pairs),
        **check,
        "steps": cfg.max_steps,
        "first_loss": None if first_loss is None else round(first_loss, 4),
        "final_loss": round(loss_value, 4) if cfg.max_steps else None,
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        **lm_data.evaluate_loss(model, eval_rows, cfg.batch_size, tok.pad_token_id, "cpu"),
    }
    cfglib.save_json({"config": cfglib.to_dict(cfg), "corpus": str(corpus_path), "result": result},
                     out_dir / "pretrain.json")
    log.info("pretrained base saved to %s: %s", out_dir, json.dumps(result))
    return result


def default_corpus(data_root: str | Path) -> Path:
    return Path(data_root) / "corpus" / "corpus.jsonl"


def run_stage(cfg: TeacherPretrainConfig, ctx) -> dict[str, Any]:
    corpus = cfg.corpus or default_corpus(ctx.data_root)
    return pretrain(cfg, corpus, ctx.stage_dir("teacher_pretrain"), data=ctx.data)


def main(argv: list[str] | None = None, prog: str = "kdistill teacher pretrain") -> int:
    from kdistill.command import add_config_arguments, add_data_arguments, data_source, stage_config

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="corpus.jsonl (default: DATA_ROOT/corpus/corpus.jsonl)")
    add_data_arguments(parser, required=False, what="corpus/corpus.jsonl and train-split reports for the prompts")
    parser.add_argument("--out", required=True, help="output folder for the base model + tokenizer")
    add_config_arguments(parser, "teacher_pretrain", example="max_steps=100")
    args = parser.parse_intermixed_args(argv)
    cfg = stage_config(TeacherPretrainConfig, args, "teacher_pretrain")
    corpus = args.corpus or cfg.corpus or (default_corpus(args.data_root) if args.data_root else None)
    if corpus is None:
        raise DataError(None, "give --corpus PATH or --data-root ROOT")
    result = pretrain(cfg, corpus, args.out, data=data_source(args))
    print(json.dumps(result, indent=2))
    return 0
