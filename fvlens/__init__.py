"""fvlens: function vectors on TransformerLens.

Find the attention heads that carry a task, turn their activations into vectors, and steer a
model with them. Every intervention is a hook list (see ``fvlens.hooks``).
"""

from fvlens.attnlrp import BatchRelevance, Relevance, attnlrp_hooks, explain, explain_batch
from fvlens.activations import mean_head_activations
from fvlens.evaluate import Evaluation, baseline, evaluate, last_logits
from fvlens.generation import generate, side_by_side
from fvlens.heads import Head, HeadScores, overlap
from fvlens.heads.aie import indirect_effects, patch_head_hooks
from fvlens.heads.select import score_heads
from fvlens.hooks import HookFn, HookList, assert_no_hooks, hook_name
from fvlens.models import Processing, load_model
from fvlens.prompts import (PromptBatch, Template, icl_prompts, instruction_prompts,
                            zero_shot_prompts)
from fvlens.pipeline import RunConfig, extract_vectors, run
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import (Instruction, Pair, Task, import_davidson, import_todd, list_tasks,
                          load_task, save_task)

__version__ = "0.1.0"

__all__ = [
    "BatchRelevance",
    "DistributedFV",
    "FunctionVector",
    "Head",
    "HeadScores",
    "RunConfig",
    "extract_vectors",
    "generate",
    "side_by_side",
    "indirect_effects",
    "mean_head_activations",
    "overlap",
    "patch_head_hooks",
    "run",
    "score_heads",
    "Evaluation",
    "HookFn",
    "HookList",
    "Instruction",
    "Pair",
    "Processing",
    "PromptBatch",
    "Relevance",
    "Task",
    "Template",
    "__version__",
    "assert_no_hooks",
    "attnlrp_hooks",
    "baseline",
    "evaluate",
    "explain",
    "explain_batch",
    "hook_name",
    "icl_prompts",
    "import_davidson",
    "import_todd",
    "instruction_prompts",
    "last_logits",
    "list_tasks",
    "load_model",
    "load_task",
    "save_task",
    "zero_shot_prompts",
]
