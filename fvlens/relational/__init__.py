"""Relational knowledge with function vectors (Kang, Wu & Lu 2026).

- ``finetune``: train an FV or DFV on a few pairs with the model frozen.
- ``decoding``: read a vector through the unembedding (top tokens, relation-word ranks).
- ``similarity``: compare relation and word-pair representations with human similarity
  ratings (Chen, Peterson & Griffiths 2017).
- ``composite`` / ``analogies``: weighted sums of a bank of relation vectors that solve
  A:B::C:? analogies.

See ``docs/relational.md``.
"""

from fvlens.relational.analogies import (AnalogyItem, build_bank, builtin_items,
                                         evaluate_analogies, load_items)
from fvlens.relational.composite import CompositeConfig, RelationBank, fit_weights
from fvlens.relational.decoding import decode, decode_heads, relation_word_rank
from fvlens.relational.finetune import (FinetuneConfig, FinetuneResult, finetune,
                                        held_out_comparison, load_vector, save_vector)
from fvlens.relational.ratings import read_ratings
from fvlens.relational.similarity import run_similarity

__all__ = [
    "AnalogyItem",
    "CompositeConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "RelationBank",
    "build_bank",
    "builtin_items",
    "decode",
    "decode_heads",
    "evaluate_analogies",
    "finetune",
    "fit_weights",
    "held_out_comparison",
    "load_items",
    "load_vector",
    "read_ratings",
    "relation_word_rank",
    "run_similarity",
    "save_vector",
]
