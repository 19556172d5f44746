"""Label-preserving perturbations of a text: the text path's augmented views.

No model, no network, no dictionary: a view of a multi-sentence text may have its sentences
shuffled, then loses a random span of up to a fifth of its words and each remaining word with
probability ``token_dropout``. The head ladder fits on plain views and on plain + augmented
views and keeps augmentation only where validation says it helps, as it does for images.
A view is fixed by the text's hash, the view number and the seed, like an image's.
"""

from __future__ import annotations

import random
import re

from tlpipe.vectors.store import view_seed

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MAX_SPAN_SHARE = 0.2  # the longest span cut, as a share of the words


def augmented_text(text: str, sha256: str, view: int, seed: int, token_dropout: float) -> str:
    """View ``view`` of ``text``; never empty (at least one word is kept)."""
    rng = random.Random(view_seed(sha256, view, seed))
    sentences = [part for part in _SENTENCE_END.split(text.strip()) if part]
    if len(sentences) > 1 and rng.random() < 0.5:
        rng.shuffle(sentences)
    words = " ".join(sentences).split()
    if len(words) > 4:
        span = rng.randint(0, int(len(words) * MAX_SPAN_SHARE))
        start = rng.randint(0, len(words) - span)
        words = words[:start] + words[start + span:]
    kept = [word for word in words if rng.random() >= token_dropout]
    return " ".join(kept or words[:1])
