"""ExpCTR-Aug's inputs: each block's values by hand, the three variants, and same-user donors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from expctr.ctr.aug_inputs import block_matrix, fact_columns, same_user_donors, variant_inputs
from expctr.llm.prompts import FACT_NAMES


def frame() -> pl.DataFrame:
    facts = {c: [float(i + 10 * j) for i in range(4)] for j, c in enumerate(fact_columns())}
    return pl.DataFrame({"user_id": ["a", "a", "b", "b"], "verdict_logit": [1.5, -2.0, 0.25, 3.0],
                         "explanation": ["w", "x", "y", "z"], **facts})


def test_blocks_by_hand():
    f = frame()
    assert block_matrix(f, "facts").shape == (4, len(FACT_NAMES))
    assert block_matrix(f, "facts")[2].tolist() == [2.0 + 10 * j for j in range(len(FACT_NAMES))]
    assert block_matrix(f, "verdict")[:, 0].tolist() == [1.5, -2.0, 0.25, 3.0]
    emb = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert block_matrix(f, "text", emb).tolist() == emb.tolist()
    with pytest.raises(ValueError, match="sentence embeddings"):
        block_matrix(f, "text")
    with pytest.raises(KeyError, match="hidden"):
        block_matrix(f, "hidden")


def test_variants_read_what_they_say():
    f, emb = frame(), np.arange(8, dtype=np.float32).reshape(4, 2)
    donors = np.array([1, 0, 3, 2])
    x, dims = variant_inputs(f, "explanation", ["verdict", "text"], emb)
    assert dims == [("facts", len(FACT_NAMES)), ("verdict", 1), ("text", 2)]
    assert x[1, len(FACT_NAMES):].tolist() == [-2.0, 2.0, 3.0]
    facts_only, dims = variant_inputs(f, "facts", ["verdict", "text"], emb)
    assert dims == [("facts", len(FACT_NAMES))] and facts_only.tolist() == x[:, :len(FACT_NAMES)].tolist()
    shuffled, _ = variant_inputs(f, "shuffled", ["verdict", "text"], emb, donors)
    # the pair's own facts, the donor's explanation: row 1 reads row 0's verdict logit and embedding
    assert shuffled[1, :len(FACT_NAMES)].tolist() == x[1, :len(FACT_NAMES)].tolist()
    assert shuffled[1, len(FACT_NAMES):].tolist() == [1.5, 0.0, 1.0]
    assert not np.array_equal(shuffled, x)  # a shuffled explanation is a different Aug input
    with pytest.raises(ValueError, match="own donor"):
        variant_inputs(f, "shuffled", ["verdict"], emb, np.array([0, 0, 3, 2]))
    with pytest.raises(ValueError, match="one donor row per pair"):
        variant_inputs(f, "shuffled", ["verdict"], emb)


def test_same_user_donors():
    users = ["a", "b", "a", "c", "a", "b"]
    d = same_user_donors(users, seed=0)
    for i, j in enumerate(d):
        if users[i] == "c":
            assert j == -1
        else:
            assert j != i and users[j] == users[i]
    assert (d == same_user_donors(users, seed=0)).all()
    assert d[1] == 5 and d[5] == 1  # two pairs of a user are each other's donor
