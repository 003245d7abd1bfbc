"""What ExpCTR-Aug reads for a pair, block by block, and the three variants of the ablation.

Blocks (columns of an explained-pairs frame, `expctr.explainer.explain`):
- `facts`: the numbers the prompt states (`expctr.llm.prompts.FACT_NAMES`: the target's reception so far,
  the history evidence, the history's size) - everything the explainer was told beyond the IDs;
- `verdict`: the explainer's verdict logit z at the end of the prompt (its confidence, which the graded
  opening states in words);
- `text`: the explanation's sentence embedding (all-MiniLM-L6-v2, normalised, 384-d);
- `hidden`: the explainer's mean last-layer state over the explanation it wrote;
- `state`: the explainer's last-layer state where its verdict is read (the end of the prompt): what it made of
  the user and the target before any word is written, of which z is one projection.

Variants (`VARIANTS`), the same architecture and recipe each:
- `explanation`: facts + the explanation blocks of the pair itself (ExpCTR-Aug);
- `facts`: the facts alone (no explanation): what the prompt's own numbers add;
- `shuffled`: facts + the explanation blocks of ANOTHER pair of the same user (`same_user_donors`): what a
  user-level explanation adds without being about this target.
The explanation's own contribution is `explanation` - `facts`; `explanation` - `shuffled` is what it adds by
being about this pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from expctr.llm.prompts import FACT_NAMES

EXPLANATION_BLOCKS = ("verdict", "text", "hidden", "state")
VARIANTS = ("explanation", "facts", "shuffled")


def fact_columns() -> list[str]:
    return [f"fact_{n}" for n in FACT_NAMES]


def block_matrix(frame: pl.DataFrame, block: str, embeddings: np.ndarray | None = None) -> np.ndarray:
    """(n, width) float32 values of one block for the rows of an explained-pairs frame."""
    if block == "facts":
        missing = [c for c in fact_columns() if c not in frame.columns]
        if missing:
            raise KeyError(f"the explained pairs lack the fact columns {missing}")
        return frame.select(fact_columns()).to_numpy().astype(np.float32)
    if block == "verdict":
        return frame["verdict_logit"].to_numpy().astype(np.float32)[:, None]
    if block == "text":
        if embeddings is None:
            raise ValueError("the text block needs the explanations' sentence embeddings")
        return np.asarray(embeddings, dtype=np.float32)
    if block == "hidden":
        if "hidden" not in frame.columns:
            raise KeyError("the explained pairs carry no `hidden` column (explain with pool_hidden)")
        return np.asarray(frame["hidden"].to_list(), dtype=np.float32)
    if block == "state":
        if "state" not in frame.columns:
            raise KeyError("the explained pairs carry no `state` column (explain with read_states)")
        return np.asarray(frame["state"].to_list(), dtype=np.float32)
    raise ValueError(f"unknown Aug input block {block!r}; choose from facts, {', '.join(EXPLANATION_BLOCKS)}")


def variant_blocks(variant: str, explanation_blocks: Sequence[str]) -> list[str]:
    """The blocks a variant reads, in order."""
    if variant == "facts":
        return ["facts"]
    if variant in ("explanation", "shuffled"):
        return ["facts", *explanation_blocks]
    raise ValueError(f"unknown Aug variant {variant!r}; choose from {VARIANTS}")


def variant_inputs(frame: pl.DataFrame, variant: str, explanation_blocks: Sequence[str],
                   embeddings: np.ndarray | None = None, donors: np.ndarray | None = None
                   ) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """(n, D) inputs of a variant and its (block, width) list. `shuffled` takes every explanation block from
    the donor row `donors[i]` (same frame, same user) instead of row i; the facts stay the pair's own."""
    blocks = variant_blocks(variant, explanation_blocks)
    if variant == "shuffled":
        if donors is None or len(donors) != frame.height:
            raise ValueError("the shuffled variant needs one donor row per pair")
        if (np.asarray(donors) == np.arange(frame.height)).any():
            raise ValueError("a pair cannot be its own donor")
    mats, dims = [], []
    for b in blocks:
        m = block_matrix(frame, b, embeddings)
        if variant == "shuffled" and b != "facts":
            m = m[np.asarray(donors)]
        mats.append(m)
        dims.append((b, m.shape[1]))
    return np.concatenate(mats, axis=1), dims


def same_user_donors(users: Sequence[str], seed: int) -> np.ndarray:
    """Per row, another row of the same user (drawn at random among that user's other rows, seeded), or -1
    when the user has no other row."""
    rng = np.random.default_rng(seed)
    rows_of: dict[str, list[int]] = {}
    for i, u in enumerate(users):
        rows_of.setdefault(str(u), []).append(i)
    out = np.full(len(users), -1, dtype=np.int64)
    for rows in rows_of.values():
        if len(rows) < 2:
            continue
        for i in rows:
            others = [j for j in rows if j != i]
            out[i] = others[int(rng.integers(len(others)))]
    return out


__all__ = ["EXPLANATION_BLOCKS", "VARIANTS", "block_matrix", "fact_columns", "same_user_donors",
           "variant_blocks", "variant_inputs"]
