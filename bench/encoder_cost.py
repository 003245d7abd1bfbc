"""What the sentence encoder costs a served slate: all-MiniLM-L6-v2 (the packaged one) embedding 10 served
explanations (bench/results/trust.json's examples), 2 torch threads, median of 20 after a warm-up.

The service runs it only for an ExpCTR-Aug that reads the explanation's embedding
(`expctr.serving.explaining.Explainer.embeds`); this is what a slate saves when it does not.

    .venv/bin/python bench/encoder_cost.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> float:
    import bentoml
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    encoder = SentenceTransformer(str(Path(bentoml.models.get("expctr_pair:latest").path) / "encoder"),
                                  device="cpu", local_files_only=True).eval()
    texts = [e["explanation"] for e in json.loads((ROOT / "bench/results/trust.json").read_text())["examples"]][:10]

    def encode() -> float:
        t0 = time.perf_counter()
        encoder.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        return time.perf_counter() - t0

    encode()
    median_ms = 1000 * sorted(encode() for _ in range(20))[10]
    print(f"{len(texts)} texts: median {median_ms:.1f} ms")
    return median_ms


if __name__ == "__main__":
    main()
