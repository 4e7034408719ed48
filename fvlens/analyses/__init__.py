"""Analyses around function vectors (Todd et al. reproductions).

- ``strategies``: other ways to extract a task vector (mean difference, PCA, gradient-ranked
  heads) beside the head FV, measured the same way.
- ``contrast``: paired clean/corrupted prompts and their last-token activations.
- ``depth``: task vectors per layer (``TaskVector``) and the depth summary; the sweeps are
  ``fvlens.injection``'s.
- ``figures``: the analyses' plotly figures.
- ``transfer``: task A's vector in task B's zero-shot prompts.
- ``frames``: automatic intensional frames of instructions (AttnLRP + greedy removal).

``fvlens.cli.analyses.add_parsers`` registers the ``strategies``, ``transfer`` and ``frames``
subcommands. See ``docs/analyses.md``.
"""

from typing import TYPE_CHECKING

from fvlens._lazy import lazy_exports

_EXPORTS = {
    "Contrast": "fvlens.analyses.contrast", "TaskVector": "fvlens.analyses.depth",
    "FrameConfig": "fvlens.analyses.frames", "FrameSearch": "fvlens.analyses.frames",
    "compare_frames": "fvlens.analyses.frames", "search_frame": "fvlens.analyses.frames",
    "StrategyConfig": "fvlens.analyses.strategies",
    "extract_vector": "fvlens.analyses.strategies",
    "gradient_scores": "fvlens.analyses.strategies",
    "run_strategies": "fvlens.analyses.strategies",
    "TransferResult": "fvlens.analyses.transfer", "transfer_matrix": "fvlens.analyses.transfer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from fvlens.analyses.contrast import Contrast
    from fvlens.analyses.depth import TaskVector
    from fvlens.analyses.frames import FrameConfig, FrameSearch, compare_frames, search_frame
    from fvlens.analyses.strategies import (StrategyConfig, extract_vector, gradient_scores,
                                            run_strategies)
    from fvlens.analyses.transfer import TransferResult, transfer_matrix
