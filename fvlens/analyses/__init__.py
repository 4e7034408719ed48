"""Analyses around function vectors (Todd et al. reproductions).

- ``strategies``: other ways to extract a task vector (mean difference, PCA, gradient-ranked
  heads) beside the head FV, measured the same way.
- ``depth``: accuracy vs injection layer and scale (``TaskVector``, fast layer sweep).
- ``transfer``: task A's vector in task B's zero-shot prompts.
- ``frames``: automatic intensional frames of instructions (AttnLRP + greedy removal).

``fvlens.analyses.cli.add_parsers`` registers the ``strategies``, ``transfer`` and ``frames``
subcommands. See ``docs/analyses.md``.
"""

from fvlens.analyses.depth import TaskVector, layer_sweep, scale_sweep
from fvlens.analyses.frames import FrameConfig, FrameSearch, compare_frames, search_frame
from fvlens.analyses.strategies import (Contrast, StrategyConfig, extract_vector,
                                        gradient_scores, run_strategies)
from fvlens.analyses.transfer import TransferResult, transfer_matrix

__all__ = ["Contrast", "FrameConfig", "FrameSearch", "StrategyConfig", "TaskVector",
           "TransferResult", "compare_frames", "extract_vector", "gradient_scores",
           "layer_sweep", "run_strategies", "scale_sweep", "search_frame", "transfer_matrix"]
