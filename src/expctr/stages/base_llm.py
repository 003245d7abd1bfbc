"""base_llm stage: the base LLM as a safetensors directory (embedded GGUF converted once, or any HF model)."""

from __future__ import annotations

import time

from expctr.config import Params
from expctr.io import write_json
from expctr.llm.base_model import prepare_base_model
from expctr.paths import ProjectPaths


def run(params: Params, paths: ProjectPaths) -> dict:
    started = time.perf_counter()
    llm = params.llm
    source = llm.source if llm.source == "embedded" else str(paths.resolve(llm.source))
    info = prepare_base_model(paths.base_llm, paths.resolve(params.data.cache_dir), source=source,
                              dtype=llm.dtype, device=llm.device, threads=llm.threads, force=True)
    metrics = {k: info[k] for k in ("source", "dtype", "n_params", "max_abs_logit_diff", "size_bytes",
                                    "model_type") if k in info}
    metrics["timings"] = info.get("timings", {})
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    write_json(paths.metric("base_llm.json"), metrics)
    return metrics
