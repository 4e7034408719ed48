"""Analyses around function vectors (Todd et al. reproductions).

- ``strategies``: other ways to extract a task vector (mean difference, PCA, gradient-ranked
  heads) beside the head FV, measured the same way.
- ``contrast``: paired clean/corrupted prompts and their last-token activations.
- ``depth``: task vectors per layer (``TaskVector``) and the depth summary; the sweeps are
  ``fvlens.injection``'s.
- ``figures``: the analyses' plotly figures.
- ``transfer``: task A's vector in task B's zero-shot prompts.
- ``frames``: automatic intensional frames of instructions (AttnLRP + greedy removal).

``fvlens.analyses.cli.add_parsers`` registers the ``strategies``, ``transfer`` and ``frames``
subcommands. See ``docs/analyses.md``.
"""

from fvlens.analyses.contrast import Contrast
from fvlens.analyses.depth import TaskVector
from fvlens.analyses.frames import FrameConfig, FrameSearch, compare_frames, search_frame
from fvlens.analyses.strategies import (StrategyConfig, extract_vector, gradient_scores,
                                        run_strategies)
from fvlens.analyses.transfer import TransferResult, transfer_matrix

__all__ = ["Contrast", "FrameConfig", "FrameSearch", "StrategyConfig", "TaskVector",
           "TransferResult", "compare_frames", "extract_vector", "gradient_scores",
           "run_strategies", "search_frame", "transfer_matrix"]
