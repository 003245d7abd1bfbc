"""The CPU attention choice (`expctr.llm.attention`) on the real embedded LLM: reads stay bit-identical to SDPA,
training agrees with SDPA to float32 rounding, one-token steps and the judge's reads stay on SDPA."""

from __future__ import annotations

import pytest
import torch
from support import TEST_THREADS

from expctr.config import RLParams
from expctr.explainer.lora import attach_adapter
from expctr.explainer.verdict import verdict_logit
from expctr.llm.attention import ATTENTION, attention_kernel, choose
from expctr.llm.base_model import load_model
from expctr.llm.judge import judge_yes_no_logits, judge_yes_no_logits_grouped
from expctr.llm.prompts import judge_messages
from expctr.llm.verdicts import verdict_token_ids

HIST = [{"title": "Toy Story", "year": 1995, "genres": ["Animation", "Comedy"], "liked": True},
        {"title": "Heat", "year": 1995, "genres": ["Action", "Crime"], "liked": False}]


def padded(tokenizer, texts):
    batch = tokenizer([tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                     add_generation_prompt=True) for t in texts],
                      return_tensors="pt", padding=True, add_special_tokens=False)
    return batch["input_ids"], batch["attention_mask"]


def test_choice_rules():
    assert choose(55, grad=True) == "eager"
    assert choose(1, grad=True) == "sdpa"  # a one-token step: SDPA is 10x faster there
    assert choose(55, grad=False) == "sdpa"


def test_load_model_sets_the_cpu_attention(model):
    assert model.config._attn_implementation == ATTENTION


def test_reads_are_bit_identical_to_sdpa(model, tokenizer):
    ids, mask = padded(tokenizer, ["Recommend a film.", "Which of these two films would a fan of Heat like most?"])
    assert (mask == 0).any()  # left padding: the boolean mask path, not plain causal attention
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        ours = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        with attention_kernel(model, "sdpa"):
            ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("texts", [["Recommend a film.", "Which of these two films would a fan of Heat like?"],
                                   ["Recommend a film for tonight."]], ids=["padded", "unpadded"])
def test_training_takes_the_plain_kernel_with_sdpas_values_and_gradients(base_model_dir, tokenizer, texts):
    """Forward and backward through the LoRA policy: z and every LoRA gradient equal SDPA's to float32
    rounding, with a padding mask and without one (where SDPA's mask builder leaves causality to the kernel)."""
    torch.manual_seed(0)
    policy = attach_adapter(load_model(base_model_dir, threads=TEST_THREADS),
                            RLParams(lora_layers_from=24, lora_dropout=0.0))
    for n, p in policy.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    ids, mask = padded(tokenizer, texts)
    tokens = verdict_token_ids(tokenizer)
    calls = []
    import transformers.models.llama.modeling_llama as llama

    eager = llama.eager_attention_forward

    def counted(*args, **kwargs):
        calls.append(1)
        return eager(*args, **kwargs)

    def run():
        policy.zero_grad()
        z = verdict_logit(policy, ids, mask, tokens)
        (z * torch.arange(1.0, len(texts) + 1)).sum().backward()
        return z.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    llama.eager_attention_forward = counted
    try:
        z, grads = run()
    finally:
        llama.eager_attention_forward = eager
    # the layers with LoRA tensors take the plain kernel; below them nothing needs a gradient (SDPA, as reads)
    assert len(calls) == policy.config.num_hidden_layers - 24
    with attention_kernel(policy.get_base_model(), "sdpa"):
        z_ref, grads_ref = run()
    assert torch.allclose(z, z_ref, atol=1e-4), (z, z_ref)
    assert grads.keys() == grads_ref.keys() and grads
    for n in grads:
        assert torch.allclose(grads[n], grads_ref[n], rtol=1e-3, atol=1e-6), n


def test_judge_reads_stay_on_sdpa(model, tokenizer):
    target = {"title": "Casino", "year": 1995, "genres": ["Crime", "Drama"]}
    group = [judge_messages(HIST, target, t, show_history=False)
             for t in ("The user will enjoy \"Casino\" because they like crime films.", None)]
    ours = judge_yes_no_logits_grouped(model, tokenizer, [group, group[:1]])
    plain = judge_yes_no_logits(model, tokenizer, group)
    with attention_kernel(model, "sdpa"):
        ref = judge_yes_no_logits_grouped(model, tokenizer, [group, group[:1]])
    for a, b in zip(ours, ref):
        assert (a == b).all(), (a, b)  # reads without gradients take SDPA: bit-identical
    assert abs(ours[0] - plain).max() < 1e-3  # grouped and whole-prompt reads agree
