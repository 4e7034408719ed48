"""Relational knowledge with function vectors (Kang, Wu & Lu 2026).

- ``finetune``: train an FV or DFV on a few pairs with the model frozen.
- ``decoding``: read a vector through the unembedding (top tokens, relation-word ranks).
- ``similarity``: compare relation and word-pair representations with human similarity
  ratings (Chen, Peterson & Griffiths 2017).
- ``composite`` / ``analogies``: weighted sums of a bank of relation vectors that solve
  A:B::C:? analogies.

See ``docs/relational.md``.
"""

from fvlens.relational.finetune import (FinetuneConfig, FinetuneResult, finetune,
                                        held_out_comparison, load_vector, save_vector)

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "held_out_comparison",
    "load_vector",
    "save_vector",
]
