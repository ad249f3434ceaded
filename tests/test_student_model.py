"""The student network: shapes, grayscale handling, generation, tokenisation and the config."""
import dataclasses

import numpy as np
import pytest
import torch

from kdistill import config as cfglib
from student import StudentConfig, create_student
from student.data import to_float_images
from student.losses import LossWeights, student_loss
from student.synthetic import TINY_MODEL, make_prepared, make_tokenizer
from student.text import IGNORE_INDEX, TokenSpec


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    prep = make_prepared(16, 8, size=32)
    return prep, make_tokenizer(prep)


def _cfg(**kw):
    return cfglib.from_dict(StudentConfig, {**TINY_MODEL, **kw})


def test_config_round_trips_through_kdistill_config():
    cfg = _cfg(teacher_embed_dim=16, grayscale="repeat")
    again = cfglib.from_dict(StudentConfig, cfglib.to_dict(cfg))
    assert again == cfg
    with pytest.raises(cfglib.ConfigError, match="decoder_heads"):
        cfglib.from_dict(StudentConfig, {**TINY_MODEL, "decoder_width": 30, "decoder_heads": 4})


def test_forward_shapes_and_maps_are_attention_distributions(toy):
    prep, tok = toy
    torch.manual_seed(0)
    model = create_student(_cfg(teacher_embed_dim=16), tok)
    assert model.cfg.vocab_size == len(tok) and model.grid == (4, 4) and model.cfg.map_grid == [4, 4]
    x = torch.rand(3, 1, 32, 32)
    spec = model.tokens
    rep = spec.batch("report", spec.encode(["FINDINGS: clear.", "IMPRESSION: edema", "x"]), 48)
    out = model(x, rep["ids"], rep["ids"], rep["mask"], with_embedding=True)
    assert out["logits"].shape == (3, 14)
    assert out["maps"].shape == (3, 14, 4, 4)
    # each finding's map is a softmax over the 16 patches
    assert torch.allclose(out["maps"].sum(dim=(2, 3)), torch.ones(3, 14), atol=1e-5)
    assert out["report_logits"].shape == (3, rep["ids"].shape[1] - 1, len(tok))
    assert out["embedding"].shape == (3, 16)


def test_sum_conv_grayscale_equals_repeating_the_channel(toy):
    _, tok = toy
    torch.manual_seed(0)
    rep = create_student(_cfg(grayscale="repeat"), tok).eval()
    summed = create_student(_cfg(grayscale="sum_conv"), tok).eval()
    state = rep.state_dict()
    state["visual.model.conv1.weight"] = state["visual.model.conv1.weight"].sum(dim=1, keepdim=True)
    summed.load_state_dict(state)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rep.encode_image(x), summed.encode_image(x), atol=1e-5)
    assert summed.visual.model.conv1.in_channels == 1 and rep.visual.model.conv1.in_channels == 3


def test_token_sequences_mask_prompt_and_padding(toy):
    _, tok = toy
    spec = TokenSpec(tok, "<report>", "<rationale>")
    prompt = spec.prompts["report"]
    assert prompt[0] == tok.bos_token_id
    body = spec.encode(["There is edema."])[0]
    b = spec.batch("report", [body, None], max_len=len(prompt) + 3)
    # truncated to max_len with eos kept last; prompt positions and padding are not targets
    assert b["ids"][0].tolist() == prompt + body[:2] + [tok.eos_token_id]
    assert b["labels"][0].tolist() == [IGNORE_INDEX] * len(prompt) + body[:2] + [tok.eos_token_id]
    assert (b["labels"][1] == IGNORE_INDEX).all() and b["mask"][1].sum() == len(prompt)


def test_greedy_generation_reproduces_a_memorised_report(toy):
    _, tok = toy
    torch.manual_seed(0)
    model = create_student(_cfg(), tok)
    text = "FINDINGS: There is edema."
    spec = model.tokens
    b = spec.batch("report", spec.encode([text]), 48)
    x = torch.rand(1, 1, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        out = model(x, report_ids=b["ids"])
        loss, _ = student_loss(out, {**b, "report_labels": b["labels"]}, LossWeights(cls=0, rep=1, kd=0, emb=0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert model.generate_texts(model.encode_image(x), max_new_tokens=30, rationales=False) == ([text], [])


def test_images_of_another_size_are_resized_and_counted():
    imgs = [np.full((40, 40), 255, np.uint8), np.zeros((32, 32), np.float32), torch.ones(1, 32, 32) * 0.5]
    x, resized = to_float_images(imgs, (32, 32))
    assert x.shape == (3, 1, 32, 32) and resized == 1
    assert torch.allclose(x[0], torch.ones(1, 32, 32)) and torch.allclose(x[2], torch.full((1, 32, 32), 0.5))
    with pytest.raises(Exception, match="grayscale"):
        to_float_images([np.zeros((3, 32, 32))], (32, 32))


def test_create_student_refuses_a_tokenizer_of_another_size(toy):
    _, tok = toy
    cfg = dataclasses.replace(_cfg(), vocab_size=len(tok) + 5)
    with pytest.raises(ValueError, match="vocabulary"):
        create_student(cfg, tok)


def test_vision_tower_loads_a_local_open_clip_checkpoint(toy, tmp_path):
    import open_clip
    from safetensors.torch import save_file

    from student.model import CONFIG_DIR

    _, tok = toy
    open_clip.add_model_config(CONFIG_DIR)
    vision = {**open_clip.get_model_config("kdistill-vit-tiny")["vision_cfg"], **TINY_MODEL["vision_overrides"]}
    torch.manual_seed(5)
    clip = open_clip.create_model("kdistill-vit-tiny", pretrained=None, vision_cfg=vision)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    model = create_student(_cfg(vision_pretrained=str(tmp_path / "clip.safetensors")), tok)
    assert torch.equal(model.visual.model.conv1.weight, clip.visual.conv1.weight.sum(dim=1, keepdim=True))
    w = "transformer.resblocks.0.attn.in_proj_weight"
    assert torch.equal(model.visual.model.state_dict()[w], clip.visual.state_dict()[w])
    # the tower's own weights (open_clip's ``visual`` state dict) load the same way
    save_file({k: v.contiguous() for k, v in clip.visual.state_dict().items()}, str(tmp_path / "visual.safetensors"))
    own = create_student(_cfg(vision_pretrained=str(tmp_path / "visual.safetensors")), tok)
    assert torch.equal(own.visual.model.state_dict()[w], clip.visual.state_dict()[w])
    with pytest.raises(ValueError, match="no such file"):
        create_student(_cfg(vision_pretrained=str(tmp_path / "missing.safetensors")), tok)


def test_rationale_text_moves_the_conclusion_to_the_front_or_keeps_the_text():
    from student.text import rationale_text

    r = "On the left, there is blunting. These signs support small left pleural effusion. Conclusion: small left pleural effusion, support devices."
    assert rationale_text(r, "conclusion_first") == (
        "Conclusion: small left pleural effusion, support devices. On the left, there is blunting. "
        "These signs support small left pleural effusion.")
    assert rationale_text(r, "as_written") == r
    normal = "The lungs are clear. There is no acute cardiopulmonary process."
    assert rationale_text(normal, "conclusion_first") == normal  # no marker: unchanged
    first = "Conclusion: edema. Signs follow."
    assert rationale_text(first, "conclusion_first") == first  # already first: unchanged
    with pytest.raises(ValueError, match="rationale order"):
        rationale_text(r, "backwards")


def test_conclusion_first_keeps_the_finding_list_inside_a_short_text_budget(toy):
    """The rationale targets the dataset builds: with conclusion_first a cut at max_len keeps the
    conclusion, as written it is lost."""
    import datasets

    from student.data import StudyDataset, rationale_index

    prep, tok = toy
    split = prep["train"]
    sid = str(split["study_id"][0])
    long = " ".join(["The lungs are clear."] * 20) + " Conclusion: edema."
    cache = datasets.Dataset.from_dict({"study_id": [sid], "rationale": [long], "embedding": [None], "consistent": [True]})
    index, _ = rationale_index(cache)
    spec = TokenSpec(tok, "<report>", "<rationale>")
    for order, kept in (("conclusion_first", True), ("as_written", False)):
        ds = StudyDataset(split, spec, index, rationale_order=order)
        assert spec.decode(ds.rationale_tokens[0]).count("edema") == 1  # nothing lost, only moved
        ids = spec.batch("rationale", [ds.rationale_tokens[0]], max_len=24)["ids"][0].tolist()
        assert ("edema" in spec.decode(ids)) is kept, order


def test_encode_marks_where_each_sentence_ends_and_not_inside_numbers(toy):
    _, tok = toy
    spec = TokenSpec(tok, "<report>", "<rationale>")
    text = "Heart size is normal. Effusion of 0.5 cm (small). No pneumothorax!"
    (tokens,) = spec.encode([text])
    cuts = [spec.decode(tokens[:k]) for k in tokens.sentence_ends]
    assert cuts == ["Heart size is normal.", "Heart size is normal. Effusion of 0.5 cm (small).", text]


def test_a_long_target_is_cut_at_its_last_full_sentence_then_ends(toy):
    from student.text import fit_to_budget

    _, tok = toy
    spec = TokenSpec(tok, "<report>", "<rationale>")
    assert fit_to_budget([1, 2, 3, 4, 5], 9) == [1, 2, 3, 4, 5]  # fits: unchanged
    assert fit_to_budget([1, 2, 3, 4, 5], 3) == [1, 2, 3]  # no sentence ends known: cut at the budget
    (tokens,) = spec.encode(["The lungs are clear. " * 12 + "Conclusion: no acute process."])
    budget = 24 - len(spec.prompts["rationale"]) - 1
    row = spec.batch("rationale", [tokens], max_len=24)
    labelled = [t for t in row["labels"][0].tolist() if t != IGNORE_INDEX]
    assert labelled[-1] == spec.eos_id and len(labelled) - 1 <= budget
    kept = spec.decode(labelled[:-1])
    last_fitting = max(k for k in tokens.sentence_ends if k <= budget)
    assert kept == spec.decode(tokens[:last_fitting]) and kept.endswith("clear.") and last_fitting < budget
    # A first sentence longer than the budget is still cut at the budget (nothing better exists).
    (one,) = spec.encode(["word " * 60 + "end."])
    assert len(fit_to_budget(one, 10)) == 10


def test_prompt_embedding_pool_reads_the_image_and_not_the_rationale_tokens(toy):
    """Feature KD's student side: with "prompt" it is the state before any rationale token, so the
    teacher's embedding can only be matched from the image; "rationale_tokens" pools the text."""
    _, tok = toy
    spec = TokenSpec(tok, "<report>", "<rationale>")
    a = spec.batch("rationale", spec.encode(["Increased density explains edema.", "Clear lungs."]), 32)
    b = spec.batch("rationale", spec.encode(["Clear lungs and a normal heart.", "Increased density."]), 32)
    x = torch.rand(2, 1, 32, 32)
    for pool, text_matters in (("prompt", False), ("rationale_tokens", True)):
        torch.manual_seed(0)
        model = create_student(_cfg(teacher_embed_dim=16, embedding_pool=pool), tok).eval()
        with torch.no_grad():
            ea = model(x, rationale_ids=a["ids"], rationale_mask=a["mask"], with_embedding=True)["embedding"]
            eb = model(x, rationale_ids=b["ids"], rationale_mask=b["mask"], with_embedding=True)["embedding"]
            ec = model(x.flip(0), rationale_ids=a["ids"], rationale_mask=a["mask"], with_embedding=True)["embedding"]
        assert (not torch.allclose(ea, eb, atol=1e-6)) is text_matters, pool
        assert not torch.allclose(ea, ec, atol=1e-6), pool  # both depend on the image


@pytest.mark.parametrize("reads_findings", [False, True])
def test_text_grad_to_tower_scales_only_the_text_gradient_into_the_tower_and_heads(toy, reads_findings):
    """Forward unchanged; a text loss's gradient in the tower (and the finding heads, when the
    decoder reads them) is ``scale`` times the unscaled one, while the decoder's is untouched and
    the classification loss's gradient is the same at every scale."""
    _, tok = toy
    spec = TokenSpec(tok, "<report>", "<rationale>")
    rep = spec.batch("report", spec.encode(["FINDINGS: clear.", "IMPRESSION: edema"]), 32)
    x = torch.rand(2, 1, 32, 32)
    grads, outs = {}, {}
    for scale in (1.0, 0.25, 0.0):
        torch.manual_seed(0)
        model = create_student(_cfg(text_grad_to_tower=scale, decoder_reads_findings=reads_findings), tok)
        out = model(x, rep["ids"])
        text = torch.nn.functional.cross_entropy(out["report_logits"].flatten(0, 1), rep["ids"][:, 1:].flatten())
        cls = out["logits"].square().mean()
        for name, loss in (("text", text), ("cls", cls)):
            model.zero_grad()
            loss.backward(retain_graph=True)
            grads[scale, name] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        outs[scale] = out["report_logits"].detach()
    tower = [k for k in grads[1.0, "text"] if k.startswith("visual.")]
    heads = [k for k in grads[1.0, "text"] if k.startswith("heads.")]
    decoder = [k for k in grads[1.0, "text"] if k.startswith("decoder.")]
    assert tower and decoder and bool(heads) is reads_findings
    for scale in (0.25, 0.0):
        assert torch.equal(outs[scale], outs[1.0])
        for k in tower + heads:
            got = grads[scale, "text"].get(k, torch.zeros_like(grads[1.0, "text"][k]))
            assert torch.allclose(got, scale * grads[1.0, "text"][k], atol=1e-7), k
        for k in decoder:
            assert torch.allclose(grads[scale, "text"][k], grads[1.0, "text"][k], atol=1e-7), k
        for k, g in grads[1.0, "cls"].items():
            assert torch.equal(grads[scale, "cls"][k], g), k
    with pytest.raises(cfglib.ConfigError, match="text_grad_to_tower"):
        cfglib.from_dict(StudentConfig, {**TINY_MODEL, "text_grad_to_tower": 1.5})


def test_report_prompt_after_a_rationale_has_a_fixed_width_and_labels_only_the_report(toy):
    _, tok = toy
    spec = TokenSpec(tok, "<report>", "<rationale>", context_tokens=6)
    report_prefix = spec.encode(["<report>"])[0]
    long, short = list(range(10, 20)), [10, 11]
    assert spec.report_prompt(long) == spec.prompts["rationale"] + long[:6] + report_prefix
    # a rationale that ended early: eos, then padding up to the same width
    assert spec.report_prompt(short) == spec.prompts["rationale"] + short + [spec.eos_id] + [spec.pad_id] * 3 + report_prefix
    assert spec.report_prompt(None) == spec.prompts["report"]  # no rationale: the plain report prompt
    assert spec.context_extra == len(spec.report_prompt(long)) - len(spec.prompts["report"])
    body = spec.encode(["There is edema."])[0]
    b = spec.batch("report", [body, body], max_len=len(spec.prompts["report"]) + 3, contexts=[long, None])
    prompt = spec.report_prompt(long)
    # the report keeps its own budget (max_len, prompt included) after the context
    assert b["ids"][0, : len(prompt) + 3].tolist() == prompt + body[:2] + [spec.eos_id]
    assert b["labels"][0].tolist() == [IGNORE_INDEX] * len(prompt) + body[:2] + [spec.eos_id]
    assert b["labels"][1, : len(spec.prompts["report"]) + 3].tolist() == [IGNORE_INDEX] * len(spec.prompts["report"]) + body[:2] + [spec.eos_id]


def _memorise(model, x, sequences, steps=80):
    """Teacher-force the decoder on (report batch) until it has memorised the texts."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    w = LossWeights(cls=0, rep=1, kd=1, emb=0)
    for _ in range(steps):
        out = model(x, report_ids=sequences["report"]["ids"], rationale_ids=sequences["rationale"]["ids"])
        batch = {"report_labels": sequences["report"]["labels"], "rationale_labels": sequences["rationale"]["labels"]}
        loss, _ = student_loss(out, batch, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_explaining_first_the_report_follows_the_rationale_it_is_written_after(toy):
    """Trained on one image with two (rationale, report) pairs, the report the decoder writes is
    the one of the rationale in its prompt: the layout teaches the report to follow the context."""
    _, tok = toy
    torch.manual_seed(0)
    model = create_student(_cfg(report_context="rationale", report_context_tokens=8), tok)
    spec = model.tokens
    rats = spec.encode(["Increased density explains edema.", "Clear lungs and a normal heart."])
    reps = spec.encode(["IMPRESSION: Edema", "IMPRESSION: The lungs are clear."])
    x = torch.zeros(2, 1, 32, 32)
    seqs = {"report": spec.batch("report", reps, 48, contexts=rats), "rationale": spec.batch("rationale", rats, 48)}
    assert all(len(r) < 40 for r in reps)  # memorised whole
    _memorise(model, x, seqs)
    with torch.no_grad():
        memory = model.decoder.image_memory(model.encode_image(x[:1]), model.classify(model.encode_image(x[:1]))[2])
        for rat, rep in zip(rats, reps):
            assert model._greedy(memory, [spec.report_prompt(rat)], 45) == [rep]


def test_explaining_first_generates_the_rationale_then_the_report(toy):
    _, tok = toy
    torch.manual_seed(0)
    model = create_student(_cfg(report_context="rationale", report_context_tokens=8), tok)
    spec = model.tokens
    rat, rep = "Increased density explains edema.", "IMPRESSION: Edema"
    x = torch.rand(1, 1, 32, 32)
    seqs = {"report": spec.batch("report", spec.encode([rep]), 40, contexts=spec.encode([rat])),
            "rationale": spec.batch("rationale", spec.encode([rat]), 40)}
    _memorise(model, x, seqs)
    tokens = model.encode_image(x)
    assert model.generate_texts(tokens, max_new_tokens=30) == ([rep], [rat])
    assert model.generate_texts(tokens, max_new_tokens=30, rationales=False) == ([rep], [])
    # the decoder has positions for the context and a full report after it
    assert model.decoder.text.positional_embedding.shape[0] == model.cfg.max_text_len + spec.context_extra


def test_no_repeat_ngram_blocking_equals_transformers(toy):
    from transformers import NoRepeatNGramLogitsProcessor

    from student.model import _block_repeated_ngrams

    g = torch.Generator().manual_seed(0)
    generated = torch.randint(0, 5, (6, 12), generator=g)
    generated[0] = torch.tensor([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3])  # a loop
    scores = torch.randn(6, 7, generator=g)
    for n in (2, 3, 4):
        expected = NoRepeatNGramLogitsProcessor(n)(generated, scores.clone())
        assert torch.equal(_block_repeated_ngrams(scores, generated, n), expected), n
    assert torch.equal(_block_repeated_ngrams(scores, generated[:, :2], 3), scores)  # shorter than n

