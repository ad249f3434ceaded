"""Tokenised LM examples and their batches, shared by pretraining and LoRA training.

A sequence is ``<bos> prompt target <eos>``; the loss covers the target and EOS only
(labels -100 elsewhere), so prompt -> rationale pairs teach the rationale, not the prompt.
"""
from __future__ import annotations

import math
import random
from typing import Iterator, Sequence

import torch

from teacher.corpus import Example

IGNORE = -100


def encode(examples: Sequence[Example], tok, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example, cut to ``max_length`` (from the prompt's start when a
    prompt is present, so the target survives)."""
    out = []
    for ex in examples:
        prompt = tok.encode(ex.prompt, add_special_tokens=False) if ex.prompt else []
        target = tok.encode(ex.target, add_special_tokens=False) + [tok.eos_token_id]
        ids = [tok.bos_token_id] + prompt if tok.bos_token_id is not None else list(prompt)
        n_prompt = len(ids)
        ids = ids + target
        labels = [IGNORE] * n_prompt + target
        if len(ids) > max_length:
            cut = len(ids) - max_length
            if n_prompt > cut:  # drop the start of the prompt, keep the whole target
                ids, labels = ids[cut:], labels[cut:]
            else:
                ids, labels = ids[:max_length], labels[:max_length]
        out.append((ids, labels))
    return out


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of shuffled index batches; rows of similar length share a batch (little
    padding), while the order of batches stays random. Same (seed, epoch) -> same batches."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50  # sort inside windows of 50 batches
    order = [i for s in range(0, len(order), window) for i in sorted(order[s:s + window], key=lambda j: lengths[j])]
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    rng.shuffle(chunks)
    return chunks


class GroupedBatchSampler(torch.utils.data.Sampler):
    """``grouped_batches`` as a batch sampler (for a DataLoader that accelerate shards); set
    ``epoch`` before each pass."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def __iter__(self):
        return iter(grouped_batches(self.lengths, self.batch_size, self.seed, self.epoch))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def batches(rows, batch_size: int, pad_id: int, seed: int, epoch: int) -> list[dict[str, torch.Tensor]]:
    lengths = [len(ids) for ids, _ in rows]
    return [collate([rows[i] for i in chunk], pad_id) for chunk in grouped_batches(lengths, batch_size, seed, epoch)]


def infinite_batches(rows, batch_size: int, pad_id: int, seed: int, start_epoch: int = 0) -> Iterator:
    epoch = start_epoch
    while True:
        yield from batches(rows, batch_size, pad_id, seed, epoch)
        epoch += 1


@torch.no_grad()
def evaluate_loss(model, rows, batch_size: int, pad_id: int, device) -> dict[str, float]:
    """Token-weighted mean loss and perplexity over ``rows`` (the held-out part)."""
    if not rows:
        return {}
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches(rows, batch_size, pad_id, seed=0, epoch=0):
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shift_logits, shift_labels = logits[:, :-1].float(), batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
            ignore_index=IGNORE, reduction="sum")
        total += loss.item()
        count += int((shift_labels != IGNORE).sum())
    model.train(was_training)
    mean = total / max(count, 1)
    return {"eval_loss": round(mean, 4), "eval_perplexity": round(math.exp(min(mean, 50.0)), 3)}
