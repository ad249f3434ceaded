"""Report-generation NLG metrics as the literature reports them: BLEU-1..4, ROUGE-L and CIDEr-D.

The definitions follow the COCO caption evaluation code (``pycocoevalcap``; CIDEr-D as in its
``cider_scorer.py`` / vrama91's ``ciderD_scorer.py``), re-implemented here so no Java is needed:

* tokenisation: pycocoevalcap runs the Stanford PTBTokenizer (``-lowerCase``) and drops its
  punctuation tokens; :func:`tokenize` reproduces that in Python (lower case, PTB-style splitting of
  punctuation and clitics, the same punctuation list dropped). It can differ from the Java tokenizer
  on rare constructs (e.g. abbreviations with several dots); all scorers then split on spaces.
* BLEU-n: corpus-level. Clipped n-gram matches and candidate n-gram counts are summed over the
  corpus; the reference length of each candidate is the *closest* reference length (ties: the
  shorter); the brevity penalty exp(1 - r/c) is applied once, from the corpus totals c and r, when
  c < r. The same tiny/small smoothing constants as pycocoevalcap (1e-15 / 1e-9) keep a zero
  match count from dividing by zero.
* ROUGE-L: per candidate, LCS against each reference; precision and recall are the maxima over
  references; F = (1 + b^2) P R / (R + b^2 P) with b = 1.2; the corpus score is the mean over
  candidates.
* CIDEr-D: tf-idf vectors over n-grams n = 1..4 with document frequency taken from the
  references of the evaluated set (``df_mode="corpus"``) and idf = log(N) - log(max(1, df));
  per n the clipped cosine sum_g min(h_g, r_g) r_g / (|h| |r|), times the Gaussian length penalty
  exp(-(l_h - l_r)^2 / (2 sigma^2)) with sigma = 6, averaged over n and over references, x10;
  the corpus score is the mean over candidates. As in the reference code, the "length" in the
  penalty is the number of *bigrams* of a sentence (its word count minus one) — a quirk of the
  original that we keep so numbers compare with published ones.

METEOR is left out: its reference implementation needs Java and WordNet data, neither of which
the project ships. SPICE likewise (Java + Stanford CoreNLP models).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence, Union

import numpy as np

References = Sequence[Union[str, Sequence[str]]]

# pycocoevalcap's PTBTokenizer.PUNCTUATIONS, plus the raw characters PTB maps onto them
# ("(" -> -LRB-, '"' -> `` or '', ...), so dropping them here drops the same tokens.
_PUNCTUATION = {
    "''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";", "(", ")", "{", "}", "[", "]", '"', "-lsb-", "-rsb-",
}
# A word: letters/digits, keeping internal hyphens, dots between digits (1.5) and slashes (1/2),
# as PTB does; clitics ('s, n't, 're, ...) split off as their own tokens, as PTB does.
_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"  # clitics
    r"|[a-z0-9]+(?:(?:-|/|\.(?=[0-9]))[a-z0-9]+)*(?=n't)"  # word before n't ("isn't" -> is n't)
    r"|[a-z0-9]+(?:(?:-|/|\.(?=[0-9]))[a-z0-9]+)*"
    r"|\.\.\.|--|``|''|\S"
)


def tokenize(text: str) -> list[str]:
    """Lower-cased PTB-style tokens with pycocoevalcap's punctuation removed."""
    tokens = _TOKEN.findall(text.lower().replace("\n", " "))
    return [t for t in tokens if t not in _PUNCTUATION]


def _normalise(candidates: Sequence[str], references: References) -> tuple[list[list[str]], list[list[list[str]]]]:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    if not candidates:
        raise ValueError("no candidates to score")
    cands = [tokenize(c) for c in candidates]
    refs = []
    for i, ref in enumerate(references):
        group = [ref] if isinstance(ref, str) else list(ref)
        if not group:
            raise ValueError(f"candidate {i} has no reference")
        refs.append([tokenize(r) for r in group])
    return cands, refs


def _ngrams(words: Sequence[str], n_max: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n_max + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def bleu(candidates: Sequence[str], references: References, n: int = 4) -> list[float]:
    """Corpus BLEU-1..n (pycocoevalcap ``Bleu``, option "closest"). Returns [BLEU-1, ..., BLEU-n]."""
    cands, refs = _normalise(candidates, references)
    return _bleu_tokens(cands, refs, n)


def _bleu_tokens(cands: list[list[str]], refs: list[list[list[str]]], n: int) -> list[float]:
    tiny, small = 1e-15, 1e-9  # pycocoevalcap's constants: a zero match count gives ~0, not an error
    correct = [0] * n
    guess = [0] * n
    test_len = ref_len = 0
    for cand, group in zip(cands, refs):
        max_counts: Counter = Counter()
        for ref in group:
            for gram, count in _ngrams(ref, n).items():
                max_counts[gram] = max(max_counts[gram], count)
        c = len(cand)
        test_len += c
        # closest reference length; on a tie the shorter one (min over (|l - c|, l))
        ref_len += min((abs(len(r) - c), len(r)) for r in group)[1]
        for k in range(n):
            guess[k] += max(0, c - k)
        for gram, count in _ngrams(cand, n).items():
            correct[len(gram) - 1] += min(max_counts.get(gram, 0), count)
    ratio = (test_len + tiny) / (ref_len + small)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores = []
    product = 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)) * penalty)
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            current[j] = previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def rouge_l_scores(candidates: Sequence[str], references: References, beta: float = 1.2) -> np.ndarray:
    """Per-candidate ROUGE-L F (pycocoevalcap ``Rouge``)."""
    cands, refs = _normalise(candidates, references)
    out = np.zeros(len(cands))
    for i, (cand, group) in enumerate(zip(cands, refs)):
        if not cand:
            continue  # an empty candidate shares nothing with any reference
        precision = max((_lcs(r, cand) / len(cand)) for r in group)
        recall = max((_lcs(r, cand) / len(r)) if r else 0.0 for r in group)
        if precision > 0 and recall > 0:
            out[i] = (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
    return out


def rouge_l(candidates: Sequence[str], references: References, beta: float = 1.2) -> float:
    """Corpus ROUGE-L: the mean of the per-candidate scores."""
    return float(np.mean(rouge_l_scores(candidates, references, beta)))


def cider_d_scores(candidates: Sequence[str], references: References, n: int = 4, sigma: float = 6.0) -> np.ndarray:
    """Per-candidate CIDEr-D (pycocoevalcap ``Cider`` / ``CiderD``, document frequency from ``references``)."""
    cands, refs = _normalise(candidates, references)
    cand_counts = [_ngrams(c, n) for c in cands]
    ref_counts = [[_ngrams(r, n) for r in group] for group in refs]
    df: Counter = Counter()
    for group in ref_counts:
        df.update(set(g for counts in group for g in counts))
    log_n = math.log(float(len(ref_counts)))

    def vectorise(counts: Counter) -> tuple[list[dict], np.ndarray, int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = np.zeros(n)
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            weight = float(tf) * (log_n - math.log(max(1.0, df[gram])))
            vec[k][gram] = weight
            norm[k] += weight**2
            if k == 1:  # the reference code's length: the bigram count (see module docstring)
                length += tf
        return vec, np.sqrt(norm), length

    scores = np.zeros(len(cands))
    for i, (counts, group) in enumerate(zip(cand_counts, ref_counts)):
        vec_h, norm_h, len_h = vectorise(counts)
        total = np.zeros(n)
        for ref in group:
            vec_r, norm_r, len_r = vectorise(ref)
            penalty = math.exp(-((len_h - len_r) ** 2) / (2 * sigma**2))
            for k in range(n):
                value = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec_h[k].items())
                if norm_h[k] != 0 and norm_r[k] != 0:
                    value /= norm_h[k] * norm_r[k]
                total[k] += value * penalty
        scores[i] = float(np.mean(total)) / len(group) * 10.0
    return scores


def cider_d(candidates: Sequence[str], references: References, n: int = 4, sigma: float = 6.0) -> float:
    """Corpus CIDEr-D: the mean of the per-candidate scores."""
    return float(np.mean(cider_d_scores(candidates, references, n, sigma)))


def nlg_metrics(candidates: Sequence[str], references: References) -> dict[str, float]:
    """Every NLG metric, flat: bleu_1..bleu_4, rouge_l, cider_d."""
    out = {f"bleu_{k + 1}": v for k, v in enumerate(bleu(candidates, references, 4))}
    out["rouge_l"] = rouge_l(candidates, references)
    out["cider_d"] = cider_d(candidates, references)
    return out
