"""Head selection: scores per attention head and the head sets taken from them."""

from fvlens.heads.scores import Head, HeadScores, overlap

__all__ = ["Head", "HeadScores", "overlap"]
