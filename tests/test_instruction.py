"""Instruction mode: chat templates, answer formats, whole-answer scoring, Pham et al.'s filter."""

from __future__ import annotations

import copy

import pytest
import torch

from fvlens.batch import DEFAULT_TEMPLATE
from fvlens.chat import answer_formats, chat_template, template_for
from fvlens.evaluation import Evaluation, answer_evaluation, evaluate
from fvlens.generation import restrict_to_prompt
from fvlens.hooks import assert_no_hooks, hook_name
from fvlens.instruct import choose_answer_format, filter_instructions
from fvlens.plan import RunConfig
from fvlens.prompts import (corrupted, icl_prompts, instruction_prompts, tokenize,
                            zero_shot_prompts)
from fvlens.steering import FunctionVector
from fvlens.tasks import Instruction, Pair, Task, load_task

from conftest import make_tiny

# A ChatML-like template in the tiny tokenizer's vocabulary: a system turn, the BOS token
# written by the template itself, the user turn, then the start of the assistant's turn.
TINY_CHAT = ("{{ bos_token }}### system:\nYou answer with the word alone, nothing else.\n\n"
             "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}"
             "\n\n{% endfor %}{% if add_generation_prompt %}### assistant:\n{% endif %}")
FP32_EXACT = 1e-5  # same computation, different batching/padding in float32


@pytest.fixture(scope="module")
def chat_model():
    model = make_tiny("llama", tokenizer=True, n_ctx=256)
    model.tokenizer = copy.deepcopy(model.tokenizer)
    model.tokenizer.chat_template = TINY_CHAT
    return model


@pytest.fixture(scope="module")
def chat_model_bos():
    """The same, for a model that prepends BOS to plain prompts."""
    model = make_tiny("llama", tokenizer=True, default_prepend_bos=True, n_ctx=256)
    model.tokenizer = copy.deepcopy(model.tokenizer)
    model.tokenizer.chat_template = TINY_CHAT
    return model


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("antonym")


def test_chat_template_is_the_tokenizers_own_rendering(chat_model, task):
    tpl = chat_template(chat_model)
    assert tpl.chat and tpl.answer_prefix == "" and tpl.name == "chat"
    q = Pair(input="hot", output="cold")
    b = instruction_prompts(chat_model, task, [q], instruction=0, template=tpl)
    content = f"{task.instructions[0].text}\nQ: hot\nA:"
    expected = chat_model.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    assert b.texts[0] == expected
    # The zero-shot prompt is the same template with the query alone in the user turn.
    zs = zero_shot_prompts(chat_model, [q], template=tpl)
    assert zs.texts[0] == chat_model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q: hot\nA:"}], tokenize=False, add_generation_prompt=True)


def test_no_chat_template_is_a_clear_error(tiny_tok_model):
    assert not getattr(tiny_tok_model.tokenizer, "chat_template", None)
    with pytest.raises(ValueError, match="--chat-template none"):
        chat_template(tiny_tok_model)
    assert template_for(tiny_tok_model, "none") is DEFAULT_TEMPLATE
    with pytest.raises(ValueError, match="chat template must be one of"):
        template_for(tiny_tok_model, "chatml")


def test_template_writes_its_own_bos_once(chat_model_bos, task):
    tok = chat_model_bos.tokenizer
    plain = zero_shot_prompts(chat_model_bos, [Pair(input="hot", output="cold")])
    assert plain.row_ids(0)[0] == tok.bos_token_id  # the model's own BOS on plain prompts
    tpl = chat_template(chat_model_bos)
    b = instruction_prompts(chat_model_bos, task, [Pair(input="hot", output="cold")],
                            template=tpl)
    ids = b.row_ids(0)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


@pytest.mark.parametrize("chat", [False, True])
def test_frame_positions_decode_to_the_frame_under_a_template(chat_model, chat, task):
    tpl = chat_template(chat_model) if chat else DEFAULT_TEMPLATE
    ins = Instruction(text="Give the opposite of the word, please.", frame=("opposite",
                                                                         "please"))
    t = Task(name="t", description="", pairs=task.pairs[:4], instructions=(ins,))
    b = instruction_prompts(chat_model, t, t.pairs, template=tpl)
    tok = chat_model.tokenizer
    for row in range(len(b)):
        frame = [tok.decode(b.tokens[row, p]) for p in b.frame_positions[row]]
        assert "".join(frame).replace(" ", "") == "oppositeplease"
        context = tok.decode(b.tokens[row, list(b.context_positions[row])])
        assert ins.text in context and "###" not in context  # no template token is context
        assert b.texts[row].startswith(tpl.chat_prefix) and tpl.chat_prefix in b.texts[row]


def test_corrupted_twin_sits_inside_the_same_template(chat_model, task):
    tpl = chat_template(chat_model)
    clean = instruction_prompts(chat_model, task, task.pairs[:6], template=tpl)
    bad = corrupted(chat_model, clean, seed=3)
    assert bad.kind == "instruction_corrupted" and bad.template == tpl
    for i in range(len(clean)):
        assert len(bad.row_ids(i)) == len(clean.row_ids(i))  # same token length
        assert bad.texts[i].startswith(tpl.chat_prefix)
        assert bad.texts[i].endswith(f"Q: {clean.queries[i].input}\nA:" + tpl.chat_suffix)
        assert bad.instructions[i] not in clean.instructions and bad.instructions[i] in bad.texts[i]
    assert (bad.targets == clean.targets).all()


def test_answer_formats_and_their_targets(chat_model, task):
    tpl = chat_template(chat_model)
    formats = answer_formats(tpl)
    assert list(formats) == ["bare", "forced:A:", "forced:The answer is:"]
    assert answer_formats(DEFAULT_TEMPLATE) == {"none": DEFAULT_TEMPLATE}
    tok = chat_model.tokenizer
    q = [Pair(input="hot", output="cold")]
    for name, expect_prefix in (("bare", ""), ("forced:A:", " "), ("forced:The answer is:", " ")):
        b = zero_shot_prompts(chat_model, q, template=formats[name])
        ids = tok(expect_prefix + "cold", add_special_tokens=False)["input_ids"]
        assert int(b.targets[0]) == ids[0] and b.answers[0] == tuple(ids)
    forced = zero_shot_prompts(chat_model, q, template=formats["forced:The answer is:"])
    assert forced.texts[0].endswith(tpl.chat_suffix + "The answer is:")


def test_icl_prompts_refuse_a_chat_template(chat_model, task):
    with pytest.raises(ValueError, match="plain Template"):
        icl_prompts(chat_model, task.pairs[:2], task.pairs[2:8], shots=2,
                    template=chat_template(chat_model))


def _hand_answer(model, prompt_ids, answer):
    """Log-probability and worst rank of ``answer`` after ``prompt_ids``, one unpadded forward
    per answer token."""
    total, worst = 0.0, 0
    for t, a in enumerate(answer):
        seq = torch.tensor([list(prompt_ids) + list(answer[:t])])
        logits = model(seq)[0, -1].float()
        total += float(logits.log_softmax(-1)[a])
        worst = max(worst, int((logits > logits[a]).sum()))
    return total, worst


def test_full_answer_scoring_equals_a_hand_computation(tiny_tok_model):
    pairs = [Pair(input="hot", output="extraordinarily cold"), Pair(input="a", output="b"),
             Pair(input="sunny", output="rainy weather today")]
    b = zero_shot_prompts(tiny_tok_model, pairs)
    assert max(len(a) for a in b.answers) > 2 and min(len(a) for a in b.answers) == 1
    ev = answer_evaluation(tiny_tok_model, b, batch_size=2)
    with torch.no_grad():
        for i in range(len(b)):
            lp, worst = _hand_answer(tiny_tok_model, b.row_ids(i), b.answers[i])
            assert abs(float(ev.logprobs[i]) - lp) < 1e-4  # sums of ≤ 4 fp32 log-probs
            assert int(ev.ranks[i]) == worst
    first = evaluate(tiny_tok_model, b)
    assert (ev.predictions == first.predictions).all()
    assert_no_hooks(tiny_tok_model)


def test_full_scoring_of_one_token_answers_is_first_token_scoring(tiny_tok_model):
    pairs = [Pair(input=w, output="b") for w in ("hot", "a", "sunny")]
    b = zero_shot_prompts(tiny_tok_model, pairs)
    assert all(len(a) == 1 for a in b.answers)
    full, first = evaluate(tiny_tok_model, b, targets="full"), evaluate(tiny_tok_model, b)
    assert torch.equal(full.ranks, first.ranks)
    torch.testing.assert_close(full.target_probs, first.target_probs, atol=FP32_EXACT, rtol=0)


def test_prompt_restricted_hooks_leave_the_answer_positions_untouched(tiny_tok_model):
    model = tiny_tok_model
    pairs = [Pair(input="hot", output="extraordinarily cold"), Pair(input="a", output="b c")]
    b = zero_shot_prompts(model, pairs)
    layer = 1
    fv = FunctionVector(vector=torch.randn(model.cfg.d_model) * 5, layer=layer)
    seen = {}

    def grab(x, hook):
        seen.setdefault(hook.name, []).append(x.detach().clone())

    name = hook_name("resid_post", layer)
    width = b.tokens.shape[1]
    longest = max(len(a) for a in b.answers) - 1
    answers = torch.tensor([list(a[:-1]) + [b.pad_id] * (longest - len(a) + 1)
                            for a in b.answers])
    real = torch.tensor([[1] * (len(a) - 1) + [0] * (longest - len(a) + 1) for a in b.answers])
    seq = torch.cat([b.tokens, answers], 1)
    mask = torch.cat([b.attention_mask, real], 1)
    with torch.no_grad():
        model.run_with_hooks(seq, attention_mask=mask, fwd_hooks=[(name, grab)])
        model.run_with_hooks(seq, attention_mask=mask,
                             fwd_hooks=restrict_to_prompt(fv.hooks(), width) + [(name, grab)])
    plain, steered = seen[name]
    torch.testing.assert_close(steered[:, width:], plain[:, width:], atol=0, rtol=0)
    torch.testing.assert_close(steered[:, width - 1] - plain[:, width - 1],
                               fv.vector.expand(2, -1), atol=1e-4, rtol=0)
    # And the first answer token's score under the vector is the first-token score.
    full = answer_evaluation(model, b, fwd_hooks=fv.hooks())
    first = evaluate(model, b, fwd_hooks=fv.hooks())
    assert (full.predictions == first.predictions).all()
    assert_no_hooks(model)


def _scripted(rates: dict[int, list[bool]]):
    """A fake ``activations_and_correct``: instruction i answers its queries per ``rates[i]``."""
    calls = []

    def fake(model, batch, *, targets="first"):
        i = int(batch.instructions[0][-1])
        start = sum(n for j, n in calls if j == i)
        calls.append((i, len(batch)))
        correct = torch.tensor(rates[i][start:start + len(batch)])
        return torch.zeros(len(batch), 1, 1, 1), correct

    return fake, calls


def _task(n_ins: int, n_pairs: int) -> Task:
    return Task(name="t", description="", pairs=tuple(Pair(input=f"w{i}", output=f"v{i}")
                                                      for i in range(n_pairs)),
                instructions=tuple(Instruction(text=f"Do task {i}", frame=("task",))
                                   for i in range(n_ins)))


def test_instruction_filter_keeps_instructions_with_enough_correct(tiny_tok_model, monkeypatch):
    import fvlens.instruct as mod

    n = 40
    rates = {0: [True] * n, 1: [i % 2 == 0 for i in range(n)], 2: [i < 3 for i in range(n)]}
    fake, calls = _scripted(rates)
    monkeypatch.setattr(mod, "activations_and_correct", fake)
    t = _task(3, n)
    got = filter_instructions(tiny_tok_model, t, t.pairs, DEFAULT_TEMPLATE, min_correct=5,
                              n_instructions=2, chunk=6)
    assert got.passed and [i.text for i in got.kept] == ["Do task 0", "Do task 1"]
    assert got.counts["Do task 0"] == {"correct": 6, "evaluated": 6, "kept": True}
    assert got.counts["Do task 1"]["correct"] >= 5 and got.counts["Do task 1"]["kept"]
    assert got.clean is not None and set(got.clean.instructions) == {"Do task 0", "Do task 1"}
    samples = got.samples(2, seed=0)
    assert len(samples) == 4 and all(samples.instructions.count(f"Do task {i}") == 2
                                     for i in (0, 1))
    # Every sample is a correctly answered prompt.
    for text, q in zip(samples.instructions, samples.queries):
        i = int(text[-1])
        assert rates[i][int(q.input[1:])]


def test_instruction_filter_rejects_and_stops_early(tiny_tok_model, monkeypatch):
    import fvlens.instruct as mod

    n = 30
    rates = {0: [True] * n, 1: [True] * n, 2: [False] * n}
    fake, calls = _scripted(rates)
    monkeypatch.setattr(mod, "activations_and_correct", fake)
    t = _task(3, n)
    got = filter_instructions(tiny_tok_model, t, t.pairs, DEFAULT_TEMPLATE, min_correct=5,
                              n_instructions=3, chunk=6)
    assert not got.passed and got.clean is None
    assert "2 of 3 instructions reach 5 correct" in got.reason and "'Do task 2'" in got.reason
    # Instruction 2 is resolved as soon as it can no longer reach 5 (26 queries wrong), and
    # the passing ones are not asked beyond their first chunk.
    assert got.counts["Do task 2"]["evaluated"] == 26
    assert got.counts["Do task 0"]["evaluated"] == 6
    assert sum(k for _, k in calls) == 6 + 6 + 26


def test_answer_format_is_chosen_on_validation_and_recorded(chat_model, task, monkeypatch):
    import fvlens.instruct as mod

    scores = {"": 0.2, "A:": 0.6, "The answer is:": 0.4}

    def fake_eval(model, batch, *, targets="first", **kw):
        p = scores[batch.template.forced_prefix]
        if not batch.template.chat:
            p = 0.8  # the plain template: recorded, never chosen
        n = len(batch)
        ranks = torch.tensor([0 if i < round(p * n) else 3 for i in range(n)])
        return Evaluation(ranks=ranks, predictions=ranks, target_probs=ranks.float())

    monkeypatch.setattr(mod, "evaluate", fake_eval)
    choice = choose_answer_format(chat_model, task, task.pairs[:10], chat_template(chat_model))
    assert choice.name == "chat/forced:A:"
    assert choice.scores == pytest.approx({"chat/bare": 0.2, "chat/forced:A:": 0.6,
                                           "chat/forced:The answer is:": 0.4, "none": 0.8})
    assert choice.to_json()["chosen"] == "chat/forced:A:"
    fixed = choose_answer_format(chat_model, task, task.pairs[:10], chat_template(chat_model),
                                 fixed="bare")
    assert fixed.name == "chat/bare"
    with pytest.raises(ValueError, match="not one of"):
        choose_answer_format(chat_model, task, task.pairs[:10], chat_template(chat_model),
                             fixed="nope")


@pytest.mark.parametrize("field, value, match", [
    ("chat_template", "auto", "applies to instruction prompts only"),
    ("min_correct", 20, "applies to instruction prompts only"),
    ("targets", "all", "targets must be one of"),
    ("chat_template", "chatml", "chat_template must be one of"),
])
def test_run_config_instruction_options(field, value, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**{field: value})
    with pytest.raises(ValueError, match="needs the instruction filter"):
        RunConfig(prompt_mode="instruction", samples_per_instruction=5)
    RunConfig(prompt_mode="instruction", chat_template="auto", min_correct=20,
              n_instructions=5, samples_per_instruction=5, targets="full")


def test_tokenize_without_bos(chat_model_bos):
    with_bos, _ = tokenize(chat_model_bos, "Q: hot")
    without, _ = tokenize(chat_model_bos, "Q: hot", bos=False)
    assert with_bos[1:] == without and with_bos[0] == chat_model_bos.tokenizer.bos_token_id


@pytest.mark.parametrize("kind", ["llama", "gpt2", "chat"])
def test_last_token_cache_equals_the_residual_cache(kind, task):
    """Plain prompts, and chat prompts whose shared system prefix runs once."""
    from fvlens.injection import residual_cache, steered_evaluation
    from fvlens.lastpos import last_token_cache, steered_last
    from fvlens.prefix import MIN_SHARED, shared_prefix
    from fvlens.steering import DistributedFV

    if kind == "chat":
        model = make_tiny("llama", tokenizer=True, n_ctx=256)
        model.tokenizer = copy.deepcopy(model.tokenizer)
        model.tokenizer.chat_template = TINY_CHAT
        b = zero_shot_prompts(model, task.pairs[:7], template=chat_template(model))
        assert shared_prefix(b) >= MIN_SHARED
    else:
        model = make_tiny(kind, tokenizer=True)
        b = zero_shot_prompts(model, task.pairs[:7])
    full, last = residual_cache(model, b, batch_size=3), last_token_cache(model, b, batch_size=3)
    torch.testing.assert_close(last.unsteered.target_probs, full.unsteered.target_probs,
                               atol=FP32_EXACT, rtol=0)
    torch.manual_seed(1)
    v = torch.randn(model.cfg.d_model) * 3
    for layer in range(model.cfg.n_layers):
        a = steered_evaluation(model, full, start=layer + 1, vector=v)
        c = steered_last(model, last, start=layer + 1, vector=v)
        torch.testing.assert_close(c.target_probs, a.target_probs, atol=FP32_EXACT, rtol=0)
        assert torch.equal(a.ranks, c.ranks)
    dfv = DistributedFV.from_heads(model, torch.randn(model.cfg.n_layers, model.cfg.n_heads,
                                                      model.cfg.d_head), [(1, 0), (2, 3), (1, 2)])
    a = steered_evaluation(model, full, start=1, fwd_hooks=dfv.hooks(scale=2.0))
    c = steered_last(model, last, start=1, fwd_hooks=dfv.hooks(scale=2.0))
    torch.testing.assert_close(c.target_probs, a.target_probs, atol=FP32_EXACT, rtol=0)
    assert_no_hooks(model)


def _check_real_tokenizer(model):
    from fvlens.tasks import list_tasks

    tpl = chat_template(model)
    tok = model.tokenizer
    for name in list_tasks():
        t = load_task(name)
        if not t.instructions:
            continue
        for i, ins in enumerate(t.instructions):
            b = instruction_prompts(model, t, t.pairs[:2], instruction=i, template=tpl)
            content = f"{ins.text}\nQ: {t.pairs[0].input}\nA:"
            assert b.texts[0] == tok.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False,
                add_generation_prompt=True)
            frame = "".join(tok.decode(b.tokens[0, p]) for p in b.frame_positions[0])
            assert all(f in frame for f in ins.frame), (name, ins.text, frame)
            bad = corrupted(model, b, seed=i)
            assert [len(bad.row_ids(r)) for r in range(2)] == [len(b.row_ids(r))
                                                              for r in range(2)], (name, ins)


@pytest.mark.slow
def test_chat_prompts_on_the_embedded_tokenizer(smollm):
    """SmolLM2's GGUF tokenizer carries a ChatML template: every built-in instruction, wrapped,
    equals the tokenizer's own rendering, keeps its frame, and has a length-matched twin."""
    _check_real_tokenizer(smollm)


@pytest.mark.slow
def test_chat_prompts_on_qwen():
    from fvlens.models import EMBEDDED_MODELS, load_model
    from fvlens.models.embedded import missing_parts

    spec = EMBEDDED_MODELS["qwen2.5-coder-0.5b"]
    if missing_parts(spec):
        pytest.skip(spec.install_command)
    _check_real_tokenizer(load_model("qwen2.5-coder-0.5b", device="cpu"))


def _task_the_model_answers(model, template) -> Task:
    """A one-instruction task whose outputs are the model's own first-token answers (so a
    random tiny model 'follows' it)."""
    words = [p.input for p in load_task("antonym").pairs[:60]]
    ins = Instruction(text="Give the opposite of the word.", frame=("opposite",))
    probe = Task(name="probe", description="", pairs=tuple(Pair(input=w, output="x")
                                                           for w in words), instructions=(ins,))
    b = instruction_prompts(model, probe, probe.pairs, template=template)
    pred = evaluate(model, b).predictions.tolist()
    tok = model.tokenizer
    pairs = []
    for w, p in zip(words, pred):
        out = tok.decode([p])
        if out.strip() and tok(out, add_special_tokens=False)["input_ids"][:1] == [p]:
            pairs.append(Pair(input=w, output=out))
    return Task(name="mirror", description="", pairs=tuple(pairs), instructions=(ins,))


@pytest.fixture(scope="module")
def mirror_model():
    """The chat model, its output bias pushing down every token that is not a word (a token
    that does not decode and re-encode to itself, or is blank), so its answers are words."""
    model = make_tiny("llama", tokenizer=True, n_ctx=256)
    model.tokenizer = copy.deepcopy(model.tokenizer)
    model.tokenizer.chat_template = TINY_CHAT
    tok = model.tokenizer
    with torch.no_grad():
        for i in range(model.cfg.d_vocab):
            s = tok.decode([i])
            if not s.strip() or tok(s, add_special_tokens=False)["input_ids"][:1] != [i]:
                model.unembed.b_U[i] = -1e4
    return model


@pytest.mark.parametrize("targets", ["first", "full"])
def test_instruction_run_end_to_end_with_template_and_filter(mirror_model, targets):
    from fvlens.pipeline import run_task
    from fvlens.plan import prepare_task, score_task

    chat_model = mirror_model
    tpl = answer_formats(chat_template(chat_model))["bare"]
    t = _task_the_model_answers(chat_model, tpl)
    assert len(t) >= 20
    cfg = RunConfig(tasks=("mirror",), prompt_mode="instruction", select=("aie", "attnlrp"),
                    chat_template="auto", answer_format="bare", targets=targets, k=3,
                    k_sweep=(2,), min_correct=4, n_instructions=1, samples_per_instruction=3,
                    n_val=4, n_test=8, dfv_scales=(1.0,), test_fraction=0.3)
    plan = prepare_task(chat_model, t, cfg)
    assert plan.template == tpl and plan.answer_format.name == "chat/bare"
    assert set(plan.answer_format.scores) == {"chat/bare", "chat/forced:A:",
                                              "chat/forced:The answer is:", "none"}
    assert plan.instruction_filter.passed and len(plan.scoring) == 3
    assert plan.val.texts[0].startswith(tpl.chat_prefix)
    assert all(text.startswith(tpl.chat_prefix) for text in plan.corrupted.texts)
    scores = {m: score_task(chat_model, plan, m, cfg) for m in cfg.select}
    res = run_task(chat_model, plan, scores, cfg)
    assert res.skipped is None and res.n == res.n_test  # the model answers its own outputs
    assert set(res.steered) == {"aie", "attnlrp"}
    assert all(set(v) == {"fv", "dfv"} for v in res.steered.values())
    pq = res.extra["per_query"]
    assert len(pq["zero_shot"]) == res.n and set(pq) >= {"aie/fv", "attnlrp/dfv", "inputs"}
    assert res.extra["answer_format"]["chosen"] == "chat/bare"
    assert res.extra["instruction_filter"]["kept"] == [t.instructions[0].text]
    assert res.k_sweep["aie"]["fv"].keys() == {2}
    if targets == "full":
        assert res.baselines["zero_shot"].mean_logprob is not None
    assert_no_hooks(chat_model)


def test_shared_prefix_passes_equal_the_plain_ones(chat_model, task, monkeypatch):
    import fvlens.evaluation as ev_mod
    import fvlens.instruct as ins_mod
    from fvlens.activations import last_token_head_activations
    from fvlens.instruct import activations_and_correct
    from fvlens.prefix import MIN_SHARED, shared_prefix

    tpl = chat_template(chat_model)
    pairs = [Pair(input="hot", output="extraordinarily cold"), Pair(input="a", output="b"),
             Pair(input="sunny", output="rainy weather")] + list(task.pairs[:4])
    b = instruction_prompts(chat_model, task, pairs, template=tpl)
    assert shared_prefix(b) >= MIN_SHARED
    shared = (evaluate(chat_model, b, batch_size=3), answer_evaluation(chat_model, b),
              activations_and_correct(chat_model, b))
    monkeypatch.setattr(ev_mod, "MIN_SHARED", 10**6)
    monkeypatch.setattr(ins_mod, "MIN_SHARED", 10**6)
    plain = (evaluate(chat_model, b, batch_size=3), answer_evaluation(chat_model, b),
             last_token_head_activations(chat_model, b))
    for s_ev, p_ev in zip(shared[:2], plain[:2]):
        assert torch.equal(s_ev.ranks, p_ev.ranks)
        torch.testing.assert_close(s_ev.target_probs, p_ev.target_probs, atol=FP32_EXACT, rtol=0)
    torch.testing.assert_close(shared[1].logprobs, plain[1].logprobs, atol=1e-4, rtol=0)
    torch.testing.assert_close(shared[2][0], plain[2][0], atol=FP32_EXACT, rtol=0)
    assert torch.equal(shared[2][1], plain[2][1])
    assert_no_hooks(chat_model)
