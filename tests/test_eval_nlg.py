"""BLEU / ROUGE-L / CIDEr-D against hand-computed values (and pycocoevalcap when installed)."""
from __future__ import annotations

import contextlib
import io
import math
import random
from pathlib import Path

import pytest

from eval import nlg

METRICS = Path(__file__).resolve().parents[1] / "eval" / "metrics"


def test_tokenize_lowercases_splits_and_drops_punctuation_like_ptb():
    assert nlg.tokenize("Heart size is normal. No effusion, (left) pneumothorax!") == [
        "heart", "size", "is", "normal", "no", "effusion", "left", "pneumothorax"]
    assert nlg.tokenize("There isn't a 1.5 cm nodule; well-defined.") == [
        "there", "is", "n't", "a", "1.5", "cm", "nodule", "well-defined"]
    assert nlg.tokenize("The patient's heart") == ["the", "patient", "'s", "heart"]


def test_identical_candidate_and_reference_score_one():
    text = ["the heart is normal in size", "no pleural effusion or pneumothorax is seen"]
    # pycocoevalcap's 1e-15 / 1e-9 smoothing constants keep a perfect score a hair under 1
    assert nlg.bleu(text, text) == pytest.approx([1.0] * 4, abs=1e-8)
    assert nlg.rouge_l(text, text) == pytest.approx(1.0)


def test_bleu_hand_worked_with_brevity_penalty():
    cand = ["the cat the mat"]
    ref = ["the cat sat on the mat"]
    # unigrams: the x2 (ref has 2), cat, mat -> 4/4; bigrams: "the cat", "the mat" of 3 -> 2/3
    # c = 4, r = 6 -> BP = exp(1 - 6/4)
    bp = math.exp(1 - 6 / 4)
    b1, b2, _, _ = nlg.bleu(cand, ref)
    assert b1 == pytest.approx(bp, rel=1e-8)
    assert b2 == pytest.approx(math.sqrt(2 / 3) * bp, rel=1e-8)


def test_bleu_clips_counts_and_uses_closest_reference_length_corpus_wide():
    # clipping: "the" x3 in the candidate, x1 in the reference -> 1/3 unigram precision
    assert nlg.bleu(["the the the"], ["the cat"], n=1)[0] == pytest.approx(1 / 3, rel=1e-8)
    # closest reference: candidate of 5 words, refs of 2 and 7 -> r = 7 (|5-7| < |5-2|)
    cand = "a b c d e"
    b1 = nlg.bleu([cand], [["a b", "a b c d e f g"]], n=1)[0]
    assert b1 == pytest.approx(math.exp(1 - 7 / 5), rel=1e-8)
    # the penalty is one corpus-level factor: c = 2 + 4, r = 4 + 4 -> exp(1 - 8/6), not a per-sentence mean
    b1 = nlg.bleu(["a b", "c d e f"], ["a b x y", "c d e f"], n=1)[0]
    assert b1 == pytest.approx(math.exp(1 - 8 / 6), rel=1e-8)


def test_rouge_l_hand_worked():
    # LCS("a b c d", "a c e") = 2 ("a c"): P = 2/4, R = 2/3, beta = 1.2
    p, r, b = 0.5, 2 / 3, 1.2
    expected = (1 + b**2) * p * r / (r + b**2 * p)
    assert nlg.rouge_l(["a b c d"], ["a c e"]) == pytest.approx(expected)
    # best precision and best recall over references (max each), then mean over candidates
    assert nlg.rouge_l(["a b c d", "x"], [["a c e", "a b"], ["y"]]) == pytest.approx(
        ((1 + b**2) * 0.5 * 1.0 / (1.0 + b**2 * 0.5) + 0.0) / 2)


def test_cider_d_identical_pairs_hand_values():
    # two disjoint 4-word pairs, candidate = reference: every n-gram has df 1 of N = 2 -> idf log 2,
    # cosine 1 for n = 1..4, no length penalty -> mean 1 x 10 = 10 per candidate
    corpus = ["a b c d", "e f g h"]
    assert nlg.cider_d(corpus, corpus) == pytest.approx(10.0)
    # 2-word sentences have no 3-/4-grams: (1 + 1 + 0 + 0) / 4 x 10 = 5
    corpus = ["a b", "c d"]
    assert nlg.cider_d(corpus, corpus) == pytest.approx(5.0)
    # an n-gram in every reference document has idf 0: the same sentence everywhere scores 0
    assert nlg.cider_d(["a b c d"] * 3, ["a b c d"] * 3) == 0.0


def test_cider_d_gaussian_length_penalty_hand_value():
    # candidate "a b c d" vs reference "a b c d x y z w" in a corpus with a disjoint second pair
    # ref-side df: each n-gram of pair 1 occurs in 1 of 2 documents, idf = log 2 for all
    corpus_c = ["a b c d", "p q"]
    corpus_r = ["a b c d x y z w", "p q"]
    # n-gram cosines for pair 1: n-grams of the candidate are a subset of the reference's
    # n: candidate has 5-n grams, ref 9-n grams, all weights equal -> cos = (5-n) / sqrt((5-n)(9-n))
    cos = [(5 - n) / math.sqrt((5 - n) * (9 - n)) for n in range(1, 5)]
    penalty = math.exp(-((3 - 7) ** 2) / (2 * 6.0**2))  # lengths are bigram counts: 3 and 7
    first = sum(cos) / 4 * penalty * 10
    second = (1 + 1) / 4 * 10  # identical 2-word pair
    assert nlg.cider_d_scores(corpus_c, corpus_r)[0] == pytest.approx(first)
    assert nlg.cider_d(corpus_c, corpus_r) == pytest.approx((first + second) / 2)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        nlg.bleu(["a"], ["a", "b"])


def _corpus(seed=0, n=25):
    rng = random.Random(seed)
    vocab = "the heart is normal size no pleural effusion or pneumothorax lungs are clear mild edema left base".split()
    sent = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12)))  # noqa: E731
    cands = [sent() for _ in range(n)]
    refs = [[sent() for _ in range(rng.randint(1, 3))] for _ in range(n)]
    cands[0] = refs[0][0]
    return cands, refs


def test_matches_pycocoevalcap_when_installed():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    cands, refs = _corpus()  # already lower-case and punctuation-free: no PTB tokenizer (Java) needed
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    assert nlg.bleu(cands, refs) == pytest.approx(bleu, abs=1e-12)
    assert nlg.rouge_l(cands, refs) == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert nlg.cider_d(cands, refs) == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


@pytest.mark.parametrize("name", ["bleu", "rouge_l", "cider_d"])
def test_evaluate_modules_load_offline_and_equal_direct_functions(name):
    evaluate = pytest.importorskip("evaluate")
    cands, refs = _corpus(seed=1, n=8)
    got = evaluate.load(str(METRICS / name)).compute(predictions=cands, references=refs)
    direct = nlg.nlg_metrics(cands, refs)
    assert got == {k: direct[k] for k in got}
    assert set(got) == ({"bleu_1", "bleu_2", "bleu_3", "bleu_4"} if name == "bleu" else {name})
