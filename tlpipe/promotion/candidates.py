"""What a promotion decision compares, as plain data: the held-out images of the data as it is
now, the challenger and champion versions, and their scores on those images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlpipe.promotion.gate import Scores


@dataclass(frozen=True)
class HeldOutSplit:
    """The current held-out images: what every model is scored on."""

    root: Path
    paths: list[str]
    labels: list[str]
    fingerprint: str
    texts: list[str] | None = None  # a text model's inputs (the paths then only name them)


@dataclass(frozen=True)
class Candidates:
    model_name: str
    challenger: str
    champion: str | None


@dataclass
class ScoredCandidates:
    challenger: Scores
    champion: Scores | None
    incomparable: str | None = None  # why the champion could not be scored, if it could not
