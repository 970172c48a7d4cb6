"""Scorers: map (question, image, reply, instruction) to a calibrated score in [0, 1]."""

from guard.scoring.base import ScoreInput, Scorer, ScorerError, ScoreResult

__all__ = ["ScoreInput", "ScoreResult", "Scorer", "ScorerError"]
