"""The served sentence's completeness guarantee on hand-written texts (no model)."""

from __future__ import annotations

import pytest

from expctr.serving.checks import is_one_complete_sentence


@pytest.mark.parametrize(("text", "complete"), [
    ('The user will probably enjoy "L.A. Confidential" because they liked "Heat".', True),
    ("The user will probably enjoy it, as it is a comedy like the ones they liked.", True),
    ('The user will probably enjoy "Airplane!"', True),
    ('The user will probably enjoy "L.A.', False),  # cut inside a quoted title (was served as complete)
    ("The user will probably enjoy it because of its blend of action,", False),  # cut at the token cap
    ("The user will probably enjoy it. They liked Heat.", False),  # two sentences
    ("", False),
])
def test_one_complete_sentence(text, complete):
    assert is_one_complete_sentence(text) is complete
