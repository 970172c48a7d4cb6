"""Scorers: map (question, image, reply, instruction) to a calibrated score in [0, 1]."""

from guard.errors import ScorerError
from guard.scoring.base import ScoreInput, Scorer, ScoreResult

__all__ = ["ScoreInput", "ScoreResult", "Scorer", "ScorerError"]
