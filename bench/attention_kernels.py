"""Which attention kernel is faster where, on this CPU: torch's fused SDPA or the plain matmul-softmax.

`expctr.llm.attention` takes the plain kernel for calls that back-propagate, SDPA for the rest. This bench is
the evidence, in three parts:
- kernels: one attention call of SmolLM2's shape (9 query / 3 key-value heads of 64, bfloat16) at the sizes
  the pipeline runs, without and with a backward pass (transformers' own `sdpa_attention_forward` and
  `eager_attention_forward`, the two paths the module dispatches to);
- training: a verdict step (`expctr.explainer.verdict.train_verdicts`, the RL pool's slates) and GRPO reason
  steps (a length reward: only the time matters) of a round's adapter, with the module's choice and with SDPA
  everywhere, alternated ours/sdpa/sdpa/ours after a warm-up;
- judge: its three kinds of reads (bare verdict sentences of pool slates, a round's test explanations, the
  zero-shot prompts with history) with the plain kernel and with SDPA, alternated likewise (the plain kernel's
  1.06-1.10x here gave no gain in the pipeline, so the judge reads on SDPA).

    .venv/bin/python bench/attention_kernels.py --out bench/results/attention_kernels.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from bench_common import recorded_command

SHAPES = [  # (rows, queries, keys): decoding, an opening, suffixes over a prefix, prefixes, whole prompts
    (32, 1, 200), (32, 15, 200), (32, 55, 180), (16, 40, 100), (32, 70, 120), (32, 126, 180), (8, 55, 180),
    (2, 120, 120), (10, 180, 180),
]
ORDER = ("ours", "sdpa", "sdpa", "ours")


def _ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return round((time.perf_counter() - t0) / repeats * 1000, 2)


def _kernel_ms(fn, mask, layer, qs, ks, vs, grad: bool, repeats: int) -> float:
    def call():
        out = fn(layer, qs, ks, vs, mask, scaling=0.125)[0]
        if grad:
            out.float().sum().backward()

    return _ms(call, repeats)


def kernels(repeats: int) -> list[dict]:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import eager_attention_forward

    class Layer(torch.nn.Module):
        num_key_value_groups, is_causal = 3, True

    layer, dt, rows = Layer().eval(), torch.bfloat16, []
    for grad in (False, True):
        for b, q, kv in SHAPES:
            gen = torch.Generator().manual_seed(0)
            qs, ks, vs = (torch.randn(b, h, n, 64, generator=gen, dtype=dt, requires_grad=grad)
                          for h, n in ((9, q), (3, kv), (3, kv)))
            mask = torch.ones(q, kv, dtype=torch.bool).tril(kv - q)[None, None].expand(b, 1, q, kv).clone()
            mask[: b // 2, :, :, :10] = False  # left padding in half the rows
            additive = torch.zeros(mask.shape, dtype=dt).masked_fill(~mask, torch.finfo(dt).min)

            args = (layer, qs, ks, vs, grad, repeats)
            with torch.enable_grad() if grad else torch.inference_mode():
                rows.append({"grad": grad, "rows": b, "queries": q, "keys": kv,
                             "sdpa_ms": _kernel_ms(sdpa_attention_forward, mask, *args),
                             "plain_ms": _kernel_ms(eager_attention_forward, additive, *args)})
            print(rows[-1], flush=True)
    return rows


def training(project: Path, k: int, prompts: int, grpo_steps: int) -> dict:
    import torch

    from expctr.config import load_params
    from expctr.explainer.dataset import build_prompt_dataset, prompt_token_ids
    from expctr.explainer.grpo import train_policy
    from expctr.explainer.lora import attach_adapter
    from expctr.explainer.rl import verdict_autocast
    from expctr.explainer.rounds import ADAPTER
    from expctr.explainer.verdict import train_verdicts
    from expctr.llm.attention import attention_kernel
    from expctr.llm.base_model import load_model, load_tokenizer
    from expctr.llm.openings import quote_token_ids
    from expctr.llm.verdicts import EXPLANATION_PREFIX
    from expctr.paths import ProjectPaths

    params, paths = load_params(project / "params.yaml"), ProjectPaths(project)
    rl, llm = params.rl, params.llm
    tokenizer = load_tokenizer(paths.base_llm)
    pool = pl.read_parquet(paths.llm_pairs / "train.parquet").head(prompts)
    data = build_prompt_dataset(pool, tokenizer, llm.max_prompt_tokens, EXPLANATION_PREFIX)
    ids, groups = prompt_token_ids(data, tokenizer), data["prefix_group"]
    reason = build_prompt_dataset(pool.head(2 * rl.prompts_per_step), tokenizer, llm.max_prompt_tokens,
                                  EXPLANATION_PREFIX + " enjoy")
    autocast = verdict_autocast(rl, llm)

    def length_reward(completions, **_):
        return [len(str(c)) / 100 for c in completions]

    def policy():
        torch.manual_seed(params.seed)
        model = load_model(paths.base_llm, dtype=llm.dtype, device=llm.device, threads=llm.threads)
        return model, attach_adapter(model, rl, paths.round_dir(k) / ADAPTER)

    def run(label: str, warm: bool = False) -> tuple[float, list[float]]:
        model, p = policy()
        ctx = attention_kernel(model, "sdpa") if label == "sdpa" else contextlib.nullcontext()
        with ctx:
            n = 2 * rl.verdict_batch_size if warm else len(ids)
            logs = train_verdicts(p, tokenizer, ids[:n], pool["judge_p_yes_pos"].to_list()[:n],
                                  pool["judge_p_yes_neg"].to_list()[:n], learning_rate=rl.verdict_lr,
                                  batch_size=rl.verdict_batch_size, temperature=rl.verdict_temperature,
                                  seed=params.seed, autocast=autocast, groups=groups[:n])
            if warm:
                return 0.0, []
            step_s = float(np.mean([r["seconds"] for r in logs]))
            _, glogs, _ = train_policy(p, tokenizer, reason, [length_reward], None, rl, llm, grpo_steps, params.seed,
                                       generation_kwargs={"suppress_tokens": quote_token_ids(tokenizer)})
        return step_s, [s["seconds"] for s in glogs]

    run("ours", warm=True)
    out: dict[str, dict[str, list]] = {"ours": {"verdict_step_s": [], "grpo_step_s": []},
                                       "sdpa": {"verdict_step_s": [], "grpo_step_s": []}}
    for label in ORDER:
        v, g = run(label)
        out[label]["verdict_step_s"].append(round(v, 3))
        out[label]["grpo_step_s"].extend(round(s, 3) for s in g)
        print(label, out[label], flush=True)
    mean = {lab: {part: float(np.mean(v)) for part, v in parts.items()} for lab, parts in out.items()}
    return {"round_adapter": k, "verdict_prompts": len(ids), "grpo_steps_per_run": grpo_steps, "seconds": out,
            "speedup": {part: round(mean["sdpa"][part] / mean["ours"][part], 2) for part in mean["ours"]}}


def judge(project: Path, k: int, pairs: int) -> dict:
    from expctr.config import load_params
    from expctr.llm.attention import attention_kernel
    from expctr.llm.base_model import load_model, load_tokenizer, reading_params
    from expctr.llm.judge import judge_p_yes_grouped
    from expctr.llm.verdicts import verdict_sentence
    from expctr.paths import ProjectPaths
    from expctr.stages.llm_pairs import judge_groups, slate_labels

    params, paths = load_params(project / "params.yaml"), ProjectPaths(project)
    llm = reading_params(params.llm)
    tokenizer = load_tokenizer(paths.base_llm)
    model = load_model(paths.base_llm, dtype=llm.dtype, device=llm.device, threads=llm.threads)
    budget, shown = params.llm.max_prompt_tokens, params.llm.judge_reads_history
    train = pl.read_parquet(paths.llm_pairs / "train.parquet").head(pairs)
    test = pl.read_parquet(paths.llm_pairs / "test.parquet").head(pairs)
    texts = pl.read_parquet(paths.explanations(k) / "test.parquet")["explanation"].to_list()[:pairs]
    kinds = {
        "bare_verdicts": (judge_groups(train, tokenizer, budget, [[verdict_sentence(True, t), verdict_sentence(False, t)]
                                                                  for t in train["target"]], shown),
                          slate_labels(train)),
        "explanations": (judge_groups(test, tokenizer, budget, [[t] for t in texts], shown), None),
        "zero_shot": (judge_groups(test, tokenizer, budget, [[None]] * test.height), None),
    }
    judge_p_yes_grouped(model, tokenizer, kinds["explanations"][0][:32], batch_size=params.llm.judge_batch_size)
    seconds: dict[str, dict[str, list[float]]] = {"plain": {}, "sdpa": {}}
    readings: dict[str, dict[str, np.ndarray]] = {}
    for label in ("plain", "sdpa", "sdpa", "plain"):  # the judge reads on SDPA; "plain": transformers' eager kernel
        with attention_kernel(model, "eager" if label == "plain" else "sdpa"):
            for kind, (groups, outer) in kinds.items():
                t0 = time.perf_counter()
                p = judge_p_yes_grouped(model, tokenizer, groups, batch_size=params.llm.judge_batch_size, outer=outer)
                seconds[label].setdefault(kind, []).append(round(time.perf_counter() - t0, 2))
                readings.setdefault(label, {})[kind] = np.concatenate([np.asarray(x) for x in p])
        print(label, seconds[label], flush=True)
    total = {lab: {kind: sum(v) for kind, v in parts.items()} for lab, parts in seconds.items()}
    return {"pairs": pairs, "explanations_of_round": k, "seconds": seconds,
            "speedup": {kind: round(total["sdpa"][kind] / total["plain"][kind], 2) for kind in kinds},
            "speedup_all": round(sum(total["sdpa"].values()) / sum(total["plain"].values()), 2),
            # bfloat16: the two kernels round differently
            "max_abs_diff_p_yes": {kind: float(np.abs(readings["plain"][kind] - readings["sdpa"][kind]).max())
                                   for kind in kinds}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("."), help="a project with a finished pipeline run")
    ap.add_argument("--round", type=int, default=2, help="whose adapter trains and whose explanations are judged")
    ap.add_argument("--prompts", type=int, default=48, help="RL pool prompts of each verdict-step run")
    ap.add_argument("--grpo-steps", type=int, default=2, help="GRPO steps of each run")
    ap.add_argument("--pairs", type=int, default=160, help="pairs of each judge read")
    ap.add_argument("--repeats", type=int, default=20, help="calls timed per kernel and size")
    ap.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = ap.parse_args(argv)

    import torch

    from expctr.config import load_params

    torch.set_num_threads(load_params(args.project / "params.yaml").llm.threads)
    result = {
        "command": recorded_command("attention_kernels.py", argv if argv is not None else sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "order": "ours, sdpa, sdpa, ours after a warm-up",
        "kernels": kernels(args.repeats),
        "training": training(args.project, args.round, args.prompts, args.grpo_steps),
        "judge": judge(args.project, args.round, args.pairs),
    }
    print(json.dumps({k: result[k] for k in ("command", "threads")} |
                     {"training": result["training"]["speedup"], "judge": result["judge"]["speedup"]}, indent=2))
    if args.out:
        from expctr.io import write_json

        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
