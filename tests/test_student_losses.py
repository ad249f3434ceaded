"""Each loss term of the student objective against a plain reference written out here."""
import math

import numpy as np
import pytest
import torch

from kdistill.labels import apply_policy
from student import losses
from student.text import IGNORE_INDEX


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_classification_bce_masks_uncertain_entries_like_the_policy():
    raw = np.array([[1.0, -1.0, np.nan], [0.0, 1.0, -1.0]], dtype=np.float32)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.7, 3.0]])
    targets, mask = apply_policy(raw, uncertain="ignore", blank="zeros")
    got = losses.classification_bce(logits, torch.from_numpy(targets), torch.from_numpy(mask))
    # Kept entries: (0,0) y=1, (0,2) blank->0, (1,0) y=0, (1,1) y=1; the two uncertain ones are masked.
    terms = [-math.log(_sigmoid(2.0)), -math.log(1 - _sigmoid(0.5)), -math.log(1 - _sigmoid(-0.3)), -math.log(_sigmoid(0.7))]
    assert got.item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    # U-Ones: the uncertain entries count as positives.
    targets, mask = apply_policy(raw, uncertain="ones")
    got = losses.classification_bce(logits, torch.from_numpy(targets), torch.from_numpy(mask))
    terms += [-math.log(_sigmoid(-1.0)), -math.log(_sigmoid(3.0))]
    assert got.item() == pytest.approx(sum(terms) / 6, rel=1e-6)


def test_caption_ce_is_the_mean_over_target_tokens_of_next_token_nll():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)  # predictions for positions 1..4
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 5, 1], [IGNORE_INDEX, 2, 6, IGNORE_INDEX, IGNORE_INDEX]])
    got = losses.caption_ce(logits, labels)
    nll = []
    for b in range(2):
        for t in range(4):
            y = int(labels[b, t + 1])
            if y != IGNORE_INDEX:
                row = logits[b, t]
                nll.append(-(row[y] - torch.logsumexp(row, 0)).item())
    assert got.item() == pytest.approx(sum(nll) / len(nll), rel=1e-6)
    assert len(nll) == 5


def test_caption_ce_without_any_target_is_zero_but_keeps_the_graph():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    got = losses.caption_ce(logits, torch.full((2, 4), IGNORE_INDEX))
    assert got.item() == 0.0 and got.requires_grad


def test_embedding_cosine_and_info_nce_against_hand_computation():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    cos = [1.0, 1 / math.sqrt(2), 2 / (2 * math.sqrt(2))]
    assert losses.embedding_cosine(s, t).item() == pytest.approx(np.mean([1 - c for c in cos]), rel=1e-6)

    tau = 0.5
    sn = [v / np.linalg.norm(v) for v in s.numpy()]
    tn = [v / np.linalg.norm(v) for v in t.numpy()]
    sim = np.array([[float(a @ b) / tau for b in tn] for a in sn])
    row = [-(sim[i, i] - math.log(sum(math.exp(x) for x in sim[i]))) for i in range(3)]
    col = [-(sim[i, i] - math.log(sum(math.exp(sim[j, i]) for j in range(3)))) for i in range(3)]
    want = 0.5 * (np.mean(row) + np.mean(col))
    assert losses.info_nce(s, t, tau).item() == pytest.approx(want, rel=1e-5)
    assert losses.feature_kd(s, t, tau).item() == pytest.approx(want + np.mean([1 - c for c in cos]), rel=1e-5)


def test_combine_leaves_zero_weight_terms_out_and_refuses_all_zero():
    values = {"cls": torch.tensor(2.0), "rep": torch.tensor(3.0), "kd": torch.tensor(float("nan"))}
    assert losses.combine(values, {"cls": 0.5, "rep": 2.0, "kd": 0.0}).item() == pytest.approx(7.0)
    with pytest.raises(ValueError):
        losses.combine(values, {"cls": 0.0})


def test_student_loss_sums_the_weighted_terms_and_skips_zero_weights():
    torch.manual_seed(1)
    b, length, vocab, dim = 3, 5, 11, 4
    out = {"logits": torch.randn(b, 14), "report_logits": torch.randn(b, length - 1, vocab),
           "rationale_logits": torch.randn(b, length - 1, vocab), "embedding": torch.randn(b, dim)}
    labels = torch.randint(0, vocab, (b, length))
    labels[:, 0] = IGNORE_INDEX
    batch = {"targets": torch.randint(0, 2, (b, 14)).float(), "target_mask": torch.ones(b, 14),
             "report_labels": labels, "rationale_labels": labels.flip(1), "has_rationale": torch.tensor([True, False, True]),
             "teacher_embedding": torch.randn(b, dim)}
    w = losses.LossWeights(cls=1.0, rep=0.5, kd=2.0, emb=0.25, temperature=0.2)
    total, terms = losses.student_loss(out, batch, w)
    keep = batch["has_rationale"]
    want = {
        "cls": losses.classification_bce(out["logits"], batch["targets"], batch["target_mask"]),
        "rep": losses.caption_ce(out["report_logits"], labels),
        "kd": losses.caption_ce(out["rationale_logits"], labels.flip(1)),
        # only the rows with a rationale take part in feature KD
        "emb": losses.feature_kd(out["embedding"][keep], batch["teacher_embedding"][keep], 0.2),
    }
    for k in want:
        assert terms[k].item() == pytest.approx(want[k].item(), rel=1e-6)
    assert total.item() == pytest.approx(want["cls"].item() + 0.5 * want["rep"].item() + 2 * want["kd"].item()
                                         + 0.25 * want["emb"].item(), rel=1e-6)
    # classification only: the decoder outputs are not needed at all
    total, terms = losses.student_loss({"logits": out["logits"]}, batch, losses.LossWeights(rep=0, kd=0, emb=0))
    assert set(terms) == {"cls"} and total.item() == pytest.approx(want["cls"].item())


def test_feature_kd_is_zero_for_a_batch_from_a_split_without_any_cached_rationale():
    # e.g. rationales generated for the train split only: validation batches carry no embeddings
    out = {"logits": torch.randn(2, 14), "embedding": torch.randn(2, 4, requires_grad=True)}
    batch = {"targets": torch.zeros(2, 14), "target_mask": torch.ones(2, 14), "has_rationale": torch.tensor([False, False])}
    total, terms = losses.student_loss(out, batch, losses.LossWeights(rep=0, kd=0, emb=1.0))
    assert terms["emb"].item() == 0.0 and terms["emb"].requires_grad
    assert total.item() == pytest.approx(losses.classification_bce(out["logits"], batch["targets"], batch["target_mask"]).item())


def test_topk_kl_with_the_whole_vocabulary_is_the_exact_kl_divergence():
    torch.manual_seed(2)
    b, length, vocab = 2, 3, 6
    student_logits, teacher_logits = torch.randn(b, length, vocab), torch.randn(b, length, vocab)
    teacher_logp = torch.log_softmax(teacher_logits, -1)
    top = teacher_logp.topk(vocab, dim=-1)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    for t in (1.0, 2.0):
        got = losses.topk_kl(student_logits, top.indices, top.values, mask, temperature=t)
        p = torch.softmax(teacher_logits / t, -1)[mask]
        want = torch.nn.functional.kl_div(torch.log_softmax(student_logits / t, -1)[mask], p, reduction="batchmean") * t * t
        assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_topk_kl_renormalises_the_teacher_over_its_k_tokens_by_hand():
    logits = torch.tensor([[[1.0, 0.0, -1.0, 2.0]]])  # one position, vocabulary of 4
    ids = torch.tensor([[[3, 0, 9]]])  # id 9 is outside the student's vocabulary: weight 0
    teacher_lp = torch.tensor([[[math.log(0.5), math.log(0.3), math.log(0.1)]]])
    got = losses.topk_kl(logits, ids, teacher_lp, torch.tensor([[True]]))
    z = sum(math.exp(v) for v in (1.0, 0.0, -1.0, 2.0))
    logq = {3: 2.0 - math.log(z), 0: 1.0 - math.log(z)}
    p = {3: 0.5 / 0.8, 0: 0.3 / 0.8}
    want = sum(p[i] * (math.log(p[i]) - logq[i]) for i in p)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # no position with a teacher row: zero, graph kept
    empty = losses.topk_kl(logits.requires_grad_(), ids, teacher_lp, torch.tensor([[False]]))
    assert empty.item() == 0.0 and empty.requires_grad


def test_student_loss_tok_term_reads_the_topk_of_the_next_label_position():
    torch.manual_seed(3)
    b, length, vocab, k = 2, 5, 9, 3
    out = {"logits": torch.randn(b, 14), "rationale_logits": torch.randn(b, length - 1, vocab)}
    ids = torch.randint(0, vocab, (b, length, k))
    lp = torch.log_softmax(torch.randn(b, length, k), -1)
    mask = torch.tensor([[False, False, True, True, False], [False, True, True, True, True]])
    batch = {"targets": torch.zeros(b, 14), "target_mask": torch.ones(b, 14), "rationale_topk_ids": ids,
             "rationale_topk_logprobs": lp, "rationale_topk_mask": mask}
    w = losses.LossWeights(rep=0, kd=0, emb=0, tok=0.5, tok_temperature=2.0)
    total, terms = losses.student_loss(out, batch, w)
    want = losses.topk_kl(out["rationale_logits"], ids[:, 1:], lp[:, 1:], mask[:, 1:], 2.0)
    assert terms["tok"].item() == pytest.approx(want.item(), rel=1e-6)
    assert total.item() == pytest.approx(terms["cls"].item() + 0.5 * want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="tok"):
        losses.LossWeights(tok=-1).validate()
