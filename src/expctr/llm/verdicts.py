"""The explainer's verdict: where it is read, and the words that state it at a given confidence.

Every explanation opens with EXPLANATION_PREFIX ("The user will"); the explainer's next-token logits there
give its verdict logit z = logit(" enjoy") - logit(" not") and its confidence pi = sigmoid(z) that the user
will enjoy the target. The explanation then states that verdict in words graded by pi (`VERDICT_GRADES`):
"will surely enjoy" at high pi down to "will almost certainly not enjoy" at low pi, so the sentence carries
how sure the explainer is, not a two-point stance. Why graded words: the frozen judge that reads an
explanation (ExpCTR-LLM) gives P(Yes) ~0.93 after any "will enjoy" and ~0.2 after any "will not enjoy",
whatever the reason says, so 1,000 pairs collapse onto two scores; the grades below were chosen because the
judge reads them in order (measured per pair on RL-pool pairs: README "Graded verdicts").

Serving uses the same words for the probability it returns (`verdict_prefix(p)`), so a served sentence
states the confidence of its score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from expctr.llm.prompts import MAX_TITLE_CHARS, as_item, sanitize_text

EXPLANATION_PREFIX = "The user will"
POSITIVE_VERDICT = "enjoy"  # first token " enjoy": the verdict token of "will enjoy"
NEGATIVE_VERDICT = "not enjoy"  # first token " not"


@dataclass(frozen=True)
class Grade:
    """One graded verdict, stated when pi >= `min_p` (and below the next grade's min_p): `words` follow
    EXPLANATION_PREFIX, the target's quoted title follows them, then `hedge` (may be empty)."""

    min_p: float
    words: str
    hedge: str = ""

    @property
    def positive(self) -> bool:
        return self.min_p >= 0.5


# Highest first. Positive grades state "enjoy", negative ones "not enjoy"; 0.5 is the side boundary, so the
# stated side always agrees with pi >= 0.5. Chosen from 28 candidate wordings by the frozen judge's readings of
# the bare sentence on 300 valid-period pairs (bench/verdict_ladder.py, bench/results/verdict_ladder.json):
# mean P(Yes) after each, highest first, 0.930, 0.920, 0.896, 0.831, 0.525 | 0.282, 0.220, 0.173, 0.138, 0.107,
# and pair by pair each reads above the next on 96-100 % of the pairs ("somewhat enjoy", 0.875, read in order
# there too, was left out: on the hand-written pairs of tests/llm/test_judge.py it reads level with "probably"). Why so many: the judge reads every
# plain "will <adverb> enjoy" as ~0.9 and every "will <adverb> not enjoy" as ~0.1-0.2, and how it reads the
# same words varies from pair to pair in a way that does not follow clicks (each wording alone ranks the pairs
# at AUC 0.44-0.53), so only wordings it reads apart carry the confidence; the hedges and the mild adverbs are
# the ones it reads between the two sides. llm_pairs re-measures the ladder on the RL pool (`judge_grades`).
_EITHER_WAY = ", though it could go either way"
VERDICT_GRADES: tuple[Grade, ...] = (
    Grade(0.9, "definitely enjoy"),
    Grade(0.8, "surely enjoy"),
    Grade(0.65, "probably enjoy"),
    Grade(0.55, "mildly enjoy"),
    Grade(0.5, "probably enjoy", _EITHER_WAY),
    Grade(0.45, "probably not enjoy", ", but it is a close call"),
    Grade(0.4, "probably not enjoy", _EITHER_WAY),
    Grade(0.3, "maybe not enjoy"),
    Grade(0.15, "likely not enjoy"),
    Grade(0.0, "almost certainly not enjoy"),
)
# The plain wording of each side (a bool verdict, the dense verdict step's two sentences).
PLAIN_POSITIVE, PLAIN_NEGATIVE = VERDICT_GRADES[2], VERDICT_GRADES[8]


def grade_of(p: float | bool, grades: tuple[Grade, ...] = VERDICT_GRADES) -> Grade:
    """The grade stating confidence `p` = P(enjoy) (highest first); a bool is a plain side."""
    if isinstance(p, bool):
        return PLAIN_POSITIVE if p else PLAIN_NEGATIVE
    for g in grades:
        if p >= g.min_p:
            return g
    return grades[-1]


def verdict_prefix(p: float | bool) -> str:
    """The opening's words before the target's title: `The user will surely enjoy`."""
    return f"{EXPLANATION_PREFIX} {grade_of(p).words}"


def verdict_opening(p: float | bool, target: Any) -> str:
    """The graded verdict up to the reason: `The user will probably enjoy "Heat", though it could go either
    way` (the explainer continues it with the reason)."""
    title = sanitize_text(as_item(target).title, MAX_TITLE_CHARS) or "untitled"
    g = grade_of(p)
    return f'{EXPLANATION_PREFIX} {g.words} "{title}"{g.hedge}'


def verdict_sentence(p: float | bool, target: Any) -> str:
    """The bare verdict as a sentence, `The user will probably enjoy "Title".`: what the judge's readings of
    each grade (and the dense verdict step's rewards, one plain sentence per side) are read from."""
    return verdict_opening(p, target) + "."


@dataclass(frozen=True)
class VerdictTokens:
    """Token ids of the two verdicts right after EXPLANATION_PREFIX (first token of " enjoy" / " not enjoy")."""

    positive: int
    negative: int


def verdict_token_ids(tokenizer, prefix: str = EXPLANATION_PREFIX) -> VerdictTokens:
    """Resolved from the tokenizer in context (never hard-coded); the two must differ."""
    ids = []
    for word in (POSITIVE_VERDICT, NEGATIVE_VERDICT):
        base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        full = tokenizer(f"{prefix} {word}", add_special_tokens=False)["input_ids"]
        if full[:len(base)] != base or len(full) == len(base):
            raise ValueError(f"the tokenizer merges {word!r} into the prefix {prefix!r}")
        ids.append(full[len(base)])
    if ids[0] == ids[1]:
        raise ValueError(f"the verdicts {POSITIVE_VERDICT!r} and {NEGATIVE_VERDICT!r} start with the same token")
    return VerdictTokens(*ids)


__all__ = ["EXPLANATION_PREFIX", "NEGATIVE_VERDICT", "PLAIN_NEGATIVE", "PLAIN_POSITIVE", "POSITIVE_VERDICT",
           "VERDICT_GRADES", "Grade", "VerdictTokens", "grade_of", "verdict_opening", "verdict_prefix",
           "verdict_sentence", "verdict_token_ids"]
