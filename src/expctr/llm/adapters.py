"""LoRA adapters on disk: the two files an adapter is, writing them atomically, loading one for inference.

Training (`expctr.explainer.rl`) and serving (`expctr.serving`) both read adapters; neither should depend on
the other, so the file format and the inference loader live here, below both.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

from expctr.config import LLMParams
from expctr.errors import ExpCTRError
from expctr.io import atomic_path
from expctr.llm.base_model import load_model, load_tokenizer, set_threads

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_NAME = "default"


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the library chatter that is noise here; warnings that could matter stay visible, and so do
    the tqdm step bar and the per-step log line.

    Observed (TRL 1.16 / peft 0.21 / transformers 5.24, one run with `-W default`): only transformers'
    FutureWarnings for its renamed checkpointing aliases (`is_gradient_checkpointing` ->
    `is_activation_checkpointing`), which peft and TRL still read on every model wrap.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated and will be removed",
                                category=FutureWarning)
        yield


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """The adapter directory, verified to hold exactly the adapter files."""
    d = Path(adapter_dir)
    if not d.is_dir():
        raise ExpCTRError(f"{d}: adapter directory not found")
    have = sorted(p.name for p in d.iterdir())
    missing = [f for f in ADAPTER_FILES if f not in have]
    if missing:
        raise ExpCTRError(f"{d}: not a LoRA adapter directory, missing {missing} (has {have})")
    return d


def save_adapter(model, out_dir: str | Path) -> Path:
    """Write ONLY `adapter_model.safetensors` + `adapter_config.json` of the "default" adapter, atomically.

    peft also writes a README model card and, with a reference adapter (beta > 0 on a continued adapter),
    a `ref/` subfolder: neither belongs in the artifact.
    """
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as staged:
        model.save_pretrained(str(staged), selected_adapters=[ADAPTER_NAME], safe_serialization=True)
        for p in staged.iterdir():
            if p.name not in ADAPTER_FILES:
                if p.is_dir():
                    import shutil

                    shutil.rmtree(p)
                else:
                    p.unlink()
        check_adapter_dir(staged)
    return out_dir


def load_explainer(base_model_dir: str | Path, adapter_dir: str | Path | None, llm: LLMParams,
                   merge: bool = True):
    """(model, tokenizer) for generation: the base model with the adapter, in eval mode.

    `merge=True` (default) folds the LoRA deltas into the in-memory weights (`merge_and_unload`): a plain
    causal LM, as fast as the base model and usable by any code that takes one (generation, judge, serving);
    the base directory on disk is untouched. `merge=False` keeps a `PeftModel` (e.g. to switch the adapter
    off). `adapter_dir=None` gives the base model itself (the round-0 / zero-shot explainer).
    """
    set_threads(llm.threads)
    tokenizer = load_tokenizer(base_model_dir)
    model = load_model(base_model_dir, dtype=llm.dtype, device=llm.device)
    if adapter_dir is None:
        return model, tokenizer
    from peft import PeftModel

    with quiet_peft():
        peft_model = PeftModel.from_pretrained(model, str(check_adapter_dir(adapter_dir)), is_trainable=False)
    model = peft_model.merge_and_unload() if merge else peft_model
    return model.eval(), tokenizer


__all__ = ["ADAPTER_FILES", "ADAPTER_NAME", "check_adapter_dir", "load_explainer", "quiet_peft", "save_adapter"]
