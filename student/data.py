"""Training data for the student: the prepared image cache joined with the teacher's rationale cache.

Every text is tokenised once up front; a batch is built in ``collate`` (images resized when they
are not the model's size, counted; token sequences padded).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdistill.errors import DataError
from kdistill.labels import apply_policy
from kdistill.data.prepare import read_batch
from kdistill.data.sections import report_text
from student.text import TokenSpec, rationale_text
from teacher.cache import TOPK_COLUMNS, tokenizer_fingerprint

log = logging.getLogger(__name__)

PREPARED_COLUMNS = ("study_id", "image", "labels", "findings", "impression")
# Up to this many bytes of images are held in memory as one array (the demo: ~10 MB); a larger
# split is read row by row from the Arrow cache.
IN_MEMORY_BYTES = 1 << 30


# ----------------------------------------------------------------------------- rationales

def check_rationale_tokenizer(cache_path: str | Path | None, tokenizer_dir: str | Path | None, tokenizer, cache) -> str:
    """Refuse a rationale cache made by another teacher / tokenizer. Returns how it was verified.

    Two checks, each used when its facts exist: the tokenizer hash in the cache's metadata JSON
    (``tokenizer_hash``, as ``teacher.cache.tokenizer_fingerprint``) against this tokenizer, and the
    cache rows' ``teacher_id`` against ``teacher.json`` of the tokenizer's teacher folder.
    """
    checks = []
    if cache_path is not None:
        root = Path(cache_path)
        root = root if (root / "dataset").is_dir() else root.parent
        for meta_path in sorted(root.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (json.JSONDecodeError, OSError):
                continue
            recorded = meta.get("tokenizer_hash") if isinstance(meta, dict) else None
            if recorded:
                mine = tokenizer_fingerprint(tokenizer)
                if recorded != mine:
                    raise DataError(meta_path, f"rationale cache was made with another tokenizer "
                                               f"(tokenizer_hash {recorded}, this tokenizer {mine}); "
                                               f"pass the teacher folder that generated it")
                checks.append("tokenizer_hash")
                break
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "teacher.json").is_file() and "teacher_id" in cache.column_names:
        meta = json.loads((Path(tokenizer_dir) / "teacher.json").read_text())
        expected = meta.get("teacher_id")
        if expected:
            found = set(cache.unique("teacher_id"))
            if found != {expected}:
                raise DataError(cache_path, f"rationale cache rows come from teacher(s) {sorted(found)[:3]}, "
                                            f"not from the teacher at {tokenizer_dir} ({expected})")
            checks.append("teacher_id")
    if not checks:
        log.warning("cannot verify that the rationale cache matches tokenizer %s (no tokenizer_hash or "
                    "teacher_id to compare)", tokenizer_dir)
    return "+".join(checks) or "unverified"


class Rationale(NamedTuple):
    text: str
    embedding: np.ndarray | None
    # (ids, log-probs), each (tokens + 1, k): the teacher's top-k at every position of ``text``
    # as tokenised without special tokens, then at eos; None when the cache has none
    topk: tuple[np.ndarray, np.ndarray] | None = None


def rationale_index(cache, consistent_only: bool = True, with_topk: bool = False) -> tuple[dict[str, Rationale], int]:
    """study_id -> Rationale, and how many studies were left out as inconsistent.

    A study with several rows keeps its first consistent one. With ``consistent_only`` a study whose
    rationales all disagree with its labels (``consistent`` False) gets none: distilling a
    rationale that contradicts the labels would teach the contradiction. ``with_topk`` reads the
    teacher's cached top-k log-probs too (the cache must have them).
    """
    has_flag = "consistent" in cache.column_names
    wanted = ("study_id", "rationale", "embedding", "consistent") + (TOPK_COLUMNS if with_topk else ())
    cols = cache.select_columns([c for c in wanted if c in cache.column_names])
    out: dict[str, tuple[Rationale, bool]] = {}
    for row in cols:
        sid = str(row["study_id"])
        ok = bool(row["consistent"]) if has_flag else True
        if sid in out and (out[sid][1] or not ok):
            continue
        emb = None if row["embedding"] is None else np.asarray(row["embedding"], dtype=np.float32)
        topk = None
        if with_topk and row["topk_ids"] is not None:
            topk = (np.asarray(row["topk_ids"], dtype=np.int64), np.asarray(row["topk_logprobs"], dtype=np.float32))
        out[sid] = (Rationale(row["rationale"] or "", emb, topk), ok)
    dropped = sum(1 for _, ok in out.values() if not ok) if consistent_only else 0
    return {k: r for k, (r, ok) in out.items() if ok or not consistent_only}, dropped


# ----------------------------------------------------------------------------- dataset

class StudyDataset(torch.utils.data.Dataset):
    """One split: images, policy-applied targets, report tokens and (optionally) rationale tokens."""

    def __init__(
        self,
        split,
        spec: TokenSpec,
        rationales: dict[str, Rationale] | None = None,
        uncertain: str = "ignore",
        blank: str = "zeros",
        split_name: str = "train",
        report_order: str = "findings_first",
        rationale_order: str = "as_written",
        rationale_marker: str = "Conclusion:",
    ):
        missing = [c for c in PREPARED_COLUMNS if c not in split.column_names]
        if missing:
            raise DataError(split_name, f"prepared split lacks column(s) {missing}")
        self.split_name = split_name
        self.study_ids = [str(s) for s in split["study_id"]]
        labels = np.asarray(split["labels"], dtype=np.float32).reshape(len(self.study_ids), -1)
        self.targets, self.target_mask = apply_policy(labels, uncertain=uncertain, blank=blank)
        self.report_texts = [report_text(f or "", i or "", report_order)
                             for f, i in zip(split["findings"], split["impression"])]
        # no tokenizer (a dataset without reports): no text to tokenise
        self.report_tokens = spec.encode(self.report_texts) if spec is not None else [None] * len(self.study_ids)
        self.rationale_tokens: list[list[int] | None] = [None] * len(self)
        self.teacher_embedding: np.ndarray | None = None
        self.teacher_topk: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(self)
        self.missing_rationales: list[str] = []
        if rationales is not None:
            present = [i for i, s in enumerate(self.study_ids) if s in rationales]
            self.missing_rationales = [s for s in self.study_ids if s not in rationales]
            texts = [rationale_text(rationales[self.study_ids[i]][0], rationale_order, rationale_marker) for i in present]
            for i, toks in zip(present, spec.encode(texts)):
                self.rationale_tokens[i] = toks
                topk = getattr(rationales[self.study_ids[i]], "topk", None)
                if topk is not None:
                    if rationale_order != "as_written":
                        raise ValueError("token-level KD needs rationale_order 'as_written': the teacher's "
                                         "top-k follow its rationale token by token")
                    if len(topk[0]) != len(toks) + 1:
                        raise DataError(split_name, f"study {self.study_ids[i]}: the cached teacher top-k has "
                                                    f"{len(topk[0])} rows for a rationale of {len(toks)} tokens "
                                                    f"(+ eos); the cache was made with another tokenizer")
                    self.teacher_topk[i] = topk
            embs = [rationales[self.study_ids[i]][1] for i in present]
            dims = {e.shape[-1] for e in embs if e is not None}
            if len(dims) > 1:
                raise DataError(split_name, f"rationale embeddings have different sizes {sorted(dims)}")
            if dims:
                dim = dims.pop()
                self.teacher_embedding = np.zeros((len(self), dim), dtype=np.float32)
                for i, e in zip(present, embs):
                    if e is not None:
                        self.teacher_embedding[i] = e
        self._split = split
        self._images = None
        first = self.image(0) if len(self) else np.zeros((1, 1), np.uint8)
        if first.size * first.itemsize * len(self) <= IN_MEMORY_BYTES:
            self._images = []
            for start in range(0, len(self), 256):
                self._images += list(read_batch(split, slice(start, start + 256), ["image"])["image"])

    def __len__(self) -> int:
        return len(self.study_ids)

    def attach_regions(self, grid: tuple[int, int]) -> dict[str, Any]:
        """Read the expert regions (the prepared cache's ``roi_bits``) as soft masks at the finding
        maps' ``grid`` (``kdistill.saliency.regions.region_masks``), once, so each item carries
        ``region_masks`` (14, h, w) and ``has_region`` (14,). Kept sparse: only studies with a region
        hold masks (float16). Called only when a loss needs regions. Returns (and logs once) the
        counts: studies with regions, regions of findings not labelled positive (ignored by the
        losses), the findings with no region anywhere in this split (their region terms skip)."""
        from kdistill.labels import FINDINGS
        from kdistill.saliency.regions import region_masks

        self.grid = (int(grid[0]), int(grid[1]))
        self.regions: dict[int, np.ndarray] = {}
        has = np.zeros((len(self), len(FINDINGS)), dtype=bool)
        if "roi_bits" not in self._split.column_names:
            log.warning("%s: the prepared cache has no roi_bits: no expert regions, the region losses are 0",
                        self.split_name)
        else:
            for start in range(0, len(self), 256):
                rows = list(range(start, min(start + 256, len(self))))
                bits = read_batch(self._split, rows, ["roi_bits"])["roi_bits"]
                if not np.asarray(bits).any():
                    continue
                masks, flags = region_masks(bits, self.grid)
                for r, i in enumerate(rows):
                    if bool(flags[r].any()):
                        self.regions[i] = masks[r].numpy().astype(np.float16)
                        has[i] = flags[r].numpy()
        self.has_region = has
        positive = (self.targets == 1) & (self.target_mask > 0)
        missing = [FINDINGS[j] for j in range(len(FINDINGS)) if not has[:, j].any()]
        report = {"studies_with_regions": len(self.regions), "region_pairs": int((has & positive).sum()),
                  "regions_not_positive_ignored": int((has & ~positive).sum()), "findings_without_regions": missing}
        log.info("%s: %d of %d studies have expert regions; %d (study, finding) regions train the region losses, "
                 "%d regions of findings not labelled positive are ignored", self.split_name, len(self.regions),
                 len(self), report["region_pairs"], report["regions_not_positive_ignored"])
        if missing:
            log.warning("%s: no expert region anywhere for %s: their region terms are skipped", self.split_name,
                        ", ".join(missing))
        return report

    @property
    def has_rationale(self) -> np.ndarray:
        return np.array([t is not None for t in self.rationale_tokens], dtype=bool)

    def count_wrong_size(self, size: tuple[int, int]) -> int | None:
        """Studies whose image is not ``size`` (they are resized on the fly); None when the split is
        read from disk row by row (then only the per-read count of training is known)."""
        if self._images is None:
            return None
        return sum(1 for a in self._images if tuple(a.shape[-2:]) != tuple(size))

    def image(self, i: int) -> np.ndarray:
        """Study ``i``'s image in its stored dtype (uint8 for the prepared cache)."""
        return self._images[i] if self._images is not None else read_batch(self._split, [i], ["image"])["image"][0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {
            "index": i,
            "image": self.image(i),
            "targets": self.targets[i],
            "target_mask": self.target_mask[i],
            "report_tokens": self.report_tokens[i],
            "rationale_tokens": self.rationale_tokens[i],
            "teacher_topk": self.teacher_topk[i],
        }
        if self.teacher_embedding is not None:
            item["teacher_embedding"] = self.teacher_embedding[i]
        if getattr(self, "has_region", None) is not None:
            item["has_region"] = self.has_region[i]
            item["region_masks"] = self.regions.get(i)
        return item


def to_float_images(images: Sequence[np.ndarray | torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """Arrays (H, W) or (1, H, W), uint8 or float in [0, 1] -> (B, 1, *size) float32; count of resized."""
    out, resized = [], 0
    for img in images:
        t = torch.as_tensor(np.asarray(img)) if not isinstance(img, torch.Tensor) else img
        if not t.is_floating_point():  # integer pixels are 0-255
            t = t.float() / 255.0
        else:
            t = t.float()
        if t.ndim == 3 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 2:
            raise DataError(None, f"expected a grayscale image (H, W) or (1, H, W), got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):  # NaN pixels would come out as NaN probabilities
            raise DataError(None, f"image {len(out)} of the batch has {int((~torch.isfinite(t)).sum())} non-finite "
                                  "pixel values (NaN or infinity)")
        if tuple(t.shape) != tuple(size):
            t = F.interpolate(t[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
            resized += 1
        out.append(t)
    return torch.stack(out).unsqueeze(1), resized


class Collate:
    """List of items -> one batch of tensors for the model and the loss."""

    def __init__(self, spec: TokenSpec, image_size: tuple[int, int], max_len: int, with_rationales: bool,
                 grid: tuple[int, int] | None = None):
        self.grid = grid  # the finding maps' grid: region masks of a batch without any region
        self.spec = spec
        self.image_size = image_size
        self.max_len = max_len
        self.with_rationales = with_rationales

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        images, resized = to_float_images([it["image"] for it in items], self.image_size)
        batch = {
            "index": torch.tensor([it["index"] for it in items]),
            "images": images,
            "resized": torch.tensor(resized),
            "targets": torch.from_numpy(np.stack([it["targets"] for it in items])),
            "target_mask": torch.from_numpy(np.stack([it["target_mask"] for it in items])),
        }
        if "has_region" in items[0]:  # the region losses are on (StudyDataset.attach_regions)
            shape = next((it["region_masks"].shape for it in items if it["region_masks"] is not None), None)
            batch["has_region"] = torch.from_numpy(np.stack([it["has_region"] for it in items]))
            if shape is None:
                shape = (batch["has_region"].shape[1], *(self.grid or (1, 1)))
            batch["region_masks"] = torch.from_numpy(np.stack(
                [it["region_masks"] if it["region_masks"] is not None else np.zeros(shape, np.float16)
                 for it in items]).astype(np.float32))
        if self.spec is None:  # a student without text (a dataset without reports)
            return batch
        # Explaining first, each report is written after its study's (teacher) rationale.
        contexts = [it["rationale_tokens"] for it in items] if self.spec.context_tokens and self.with_rationales else None
        report = self.spec.batch("report", [it["report_tokens"] for it in items], self.max_len, contexts)
        batch["report_ids"], batch["report_labels"] = report["ids"], report["labels"]
        if self.with_rationales:
            toks = [it["rationale_tokens"] for it in items]
            rat = self.spec.batch("rationale", toks, self.max_len)
            batch["rationale_ids"] = rat["ids"]
            batch["rationale_labels"] = rat["labels"]
            batch["rationale_mask"] = rat["mask"]
            batch["has_rationale"] = torch.tensor([t is not None for t in toks])
            if any(it.get("teacher_topk") is not None for it in items):
                batch.update(self._topk(items, rat["labels"], len(self.spec.prompts["rationale"])))
            if "teacher_embedding" in items[0]:
                batch["teacher_embedding"] = torch.from_numpy(np.stack([it["teacher_embedding"] for it in items]))
        return batch

    def _topk(self, items, labels: torch.Tensor, start: int) -> dict[str, torch.Tensor]:
        """The teacher's top-k in the rationale labels' coordinates: ``rationale_topk_ids`` /
        ``_logprobs`` (B, L, k) and ``rationale_topk_mask`` (B, L), true where the label is the
        token the teacher was fed there (a target cut at max_text_len ends with an eos the
        teacher never predicted at that place: no KD on it)."""
        k = next(it["teacher_topk"][0].shape[1] for it in items if it.get("teacher_topk") is not None)
        b, width = labels.shape
        ids = torch.zeros((b, width, k), dtype=torch.long)
        logp = torch.zeros((b, width, k), dtype=torch.float32)
        mask = torch.zeros((b, width), dtype=torch.bool)
        for r, it in enumerate(items):
            if it.get("teacher_topk") is None:
                continue
            fed = torch.tensor(list(it["rationale_tokens"]) + [self.spec.eos_id])
            n = min(len(fed), width - start)
            body = labels[r, start:start + n]
            ids[r, start:start + n] = torch.from_numpy(it["teacher_topk"][0][:n])
            logp[r, start:start + n] = torch.from_numpy(it["teacher_topk"][1][:n])
            mask[r, start:start + n] = body == fed[:n]
        return {"rationale_topk_ids": ids, "rationale_topk_logprobs": logp, "rationale_topk_mask": mask}


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch: the same order in every process and after a resume."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def coverage(ds: StudyDataset, inconsistent_in_cache: int = 0) -> dict[str, Any]:
    """How many studies of a split have a rationale (for metrics.json and the log); the missing
    include those whose only rationales were inconsistent (counted over the whole cache)."""
    missing = ds.missing_rationales
    return {"studies": len(ds), "with_rationale": len(ds) - len(missing), "missing_rationale": len(missing),
            "missing_examples": missing[:5], "inconsistent_left_out_in_cache": inconsistent_in_cache}
