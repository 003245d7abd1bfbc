"""LLM side: base-model conversion (GGUF -> safetensors), prompts, batched generation, Yes/No judge.

Modules import torch/transformers lazily where they can, so importing `expctr.llm.prompts` stays cheap.
"""
