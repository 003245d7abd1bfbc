"""Attention on a CPU: the plain matmul-softmax kernel where gradients flow, SDPA elsewhere.

Why: torch's CPU flash attention (SDPA) is slow to back-propagate. Measured on this stack (2 cores, bfloat16,
SmolLM2's 9 query / 3 key-value heads of 64; `bench/attention_kernels.py`, bench/results/attention_kernels.json):
- with gradients the plain kernel is 1.7-3.5x faster for every query length above one (32 x 55 queries over 180
  keys, forward and backward: 71 -> 28 ms a layer); a verdict step of 8 prompts 2.60 -> 2.33 s alternated on one
  adapter, the pipeline's verdict steps 607 -> 524 s over three rounds (GRPO steps: no gain measured);
- the judge's reads stay on SDPA: the plain kernel read them 1.06-1.10x faster alternated on 160 pairs, but gave
  no gain in the pipeline (its judge stages took the same time) and its score tensors raised llm_pairs' peak
  RSS 0.4 GiB (pipeline rerun of 2078a98), so it was taken out again;
- one-token decoding stays on SDPA (1.1 ms against 8.5 ms a layer at 32 rows), and so does generation's
  prefill, so explanations and verdict readings stay bit-identical.
The arithmetic is the same either way (transformers' own eager and SDPA paths over one boolean mask): the
results differ only in float rounding.

The implementation is registered with transformers as ATTENTION and set by `expctr.llm.base_model.load_model` on
CPU Llama-family models (the embedded SmolLM2); other models and devices keep their default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

ATTENTION = "expctr_cpu"
MODEL_TYPES = ("llama",)  # attention without sinks, soft-capping or sliding windows: the two paths agree


def choose(queries: int, grad: bool) -> str:
    """"eager" or "sdpa" for one attention call (see the module docstring)."""
    return "eager" if queries > 1 and grad else "sdpa"


@contextlib.contextmanager
def attention_kernel(model, name: str) -> Iterator:
    """Run `model` with transformers' attention implementation `name` (e.g. "sdpa" everywhere, for a comparison),
    then put ATTENTION back."""
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(ATTENTION)


_ADDITIVE: dict = {}  # the last boolean mask's additive form: one conversion per pass, not one per layer


def _additive(mask, dtype):
    """The additive float mask of a boolean one; every layer of a pass gets the same mask object."""
    import torch

    if _ADDITIVE.get("mask") is not mask or _ADDITIVE.get("dtype") != dtype:
        _ADDITIVE.update(mask=mask, dtype=dtype, value=torch.zeros(mask.shape, dtype=dtype, device=mask.device)
                         .masked_fill_(~mask, torch.finfo(dtype).min))
    return _ADDITIVE["value"]


def _attention(module, query, key, value, attention_mask, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import eager_attention_forward

    q, kv = query.shape[-2], key.shape[-2]
    grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    if query.device.type != "cpu" or choose(q, grad) == "sdpa":
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is None:  # SDPA's mask builder skips a plain causal mask: write it
        attention_mask = torch.ones((q, kv), dtype=torch.bool, device=query.device).tril(kv - q)[None, None]
    if attention_mask.dtype == torch.bool:
        attention_mask = _additive(attention_mask, query.dtype)
    kwargs.pop("is_causal", None)
    return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> str:
    """Register ATTENTION (its mask is SDPA's boolean one) with transformers; idempotent. Returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION


def use_cpu_attention(model):
    """Switch a CPU Llama-family model to ATTENTION; returns the model (others are returned unchanged)."""
    if model.device.type == "cpu" and getattr(model.config, "model_type", None) in MODEL_TYPES:
        model.set_attn_implementation(register())
    return model


__all__ = ["ATTENTION", "attention_kernel", "choose", "register", "use_cpu_attention"]
