"""Hugging Face model -> processed float32 TransformerLens state dict (the cold path).

Every local kind (embedded, ``.gguf``, HF folder) goes through one conversion: transformers
loads the model in float32 (a GGUF file is dequantised), ``fvlens.models.configs`` maps its
config, TransformerLens's own weight conversion turns the weights into its per-head layout, and
TL's ``ProcessWeights`` applies the processing flags, always in float32 (the requested dtype is
a cast afterwards). The HF model is released before processing so that the peak memory is about
one float32 copy of the weights plus the tensor being folded. Hub names go through TL's
``from_pretrained`` (its name-keyed configs).

``CONVERSION_VERSION`` is part of every cache key: bump it whenever a change here or in
``configs``/``build`` can change the converted weights, so an entry made by another conversion
is never reused.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformerConfig

from fvlens.models.build import complete_state, drop_folded_norms
from fvlens.models.configs import architecture_of, tl_config, unsupported
from fvlens.models.processing import Processing, process
from fvlens.models.rotary import use_hf_rotary
from fvlens.models.specs import Source

__all__ = ["CONVERSION_VERSION", "Converted", "convert_source", "tokenizer_adds_bos"]

log = logging.getLogger(__name__)

# 1: fvlens <= 0.1 (TL's mapping via a temp config folder; Gemma unsupported).
# 2: own Gemma 1/2/3 mapping; processing always in float32; rotary tables by HF's formula
#    (fvlens.models.rotary), one per attention type.
CONVERSION_VERSION = 2


@dataclasses.dataclass(kw_only=True)
class Converted:
    """A converted model before it is built: config, processed float32 state, tokenizer."""

    cfg: HookedTransformerConfig
    state: dict[str, torch.Tensor]
    tokenizer: Any | None
    info: dict[str, Any]


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the model expects a BOS token: the tokenizer adds one by itself."""
    ids = tokenizer("a").input_ids
    return tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id


def convert_source(source: Source, path: Path | None, processing: Processing) -> Converted:
    """Load and convert a source (``path``: the GGUF file or model folder to read).

    Raises:
        ValueError: transformers cannot read the file or folder (bad config.json, not a model).
        FileNotFoundError: a hub model that cannot be fetched (offline, unknown repository).
        NotImplementedError: an architecture that does not convert (the message lists those
            that do).
    """
    flags = dataclasses.asdict(processing)
    if source.kind == "hub":
        return _convert_hub(source.name, flags)
    hf_model, tokenizer = _load_hf(source, path)
    hf = _config_dict(hf_model)
    cfg = tl_config(hf, name=source.name, fold_ln=processing.fold_ln,
                    default_prepend_bos=tokenizer_adds_bos(tokenizer))
    state = _state_dict(hf_model, cfg)
    del hf_model
    gc.collect()
    return Converted(cfg=cfg, state=_process(cfg, state, processing), tokenizer=tokenizer,
                     info={"architecture": architecture_of(hf)})


def _load_hf(source: Source, path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.kind in ("embedded", "gguf"):
        folder, kwargs = str(path.parent), {"gguf_file": path.name}
    else:
        folder, kwargs = str(path), {}
    what = f"{path}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    except NotImplementedError:
        raise
    except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError) as err:
        arch = _declared_architecture(source, path)
        if arch is not None and _is_unknown_architecture(err):
            raise unsupported(arch, f"transformers: {err}") from err
        raise ValueError(
            f"transformers could not load the model at {what}: {type(err).__name__}: {err}. "
            "A model folder needs a valid config.json, weights and tokenizer files (what "
            "`save_pretrained` writes); a .gguf file must be a complete GGUF model."
        ) from err
    hf_model.eval()
    return hf_model, tokenizer


def _declared_architecture(source: Source, path: Path) -> str | None:
    if source.kind != "hf_dir":
        return None
    try:
        d = json.loads((path / "config.json").read_text())
        return architecture_of(d)
    except (OSError, ValueError, AttributeError):
        return None


def _is_unknown_architecture(err: BaseException) -> bool:
    text = str(err).lower()
    return "unrecognized" in text or "does not recognize" in text or "model type" in text


def _config_dict(hf_model) -> dict[str, Any]:
    d = hf_model.config.to_dict()
    d.pop("quantization_config", None)  # GGUF weights arrive dequantized
    if not d.get("architectures"):
        d["architectures"] = [type(hf_model).__name__]
    return d


def _state_dict(hf_model, cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    """TL's weight conversion of an HF model into its per-head layout (float32)."""
    from transformer_lens import loading_from_pretrained as loading

    with tempfile.TemporaryDirectory(prefix="fvlens-") as tmp:
        try:
            state = loading.get_pretrained_state_dict(tmp, cfg, hf_model, dtype=torch.float32)
        except (ValueError, NotImplementedError, KeyError, AttributeError) as err:
            raise unsupported(cfg.original_architecture, err) from err
    # Conversions return views of the HF parameters; detach them from autograd.
    return {k: v.detach().to(torch.float32) for k, v in state.items()}


def _process(cfg: HookedTransformerConfig, state: dict[str, torch.Tensor],
             processing: Processing) -> dict[str, torch.Tensor]:
    """Fill TL's buffers and defaults, then apply the processing flags in float32."""
    state = use_hf_rotary(cfg, complete_state(cfg, state))
    return drop_folded_norms(cfg, process(cfg, state, processing))


def _convert_hub(name: str, flags: dict[str, bool]) -> Converted:
    from transformer_lens import HookedTransformer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = HookedTransformer.from_pretrained(
                name, dtype=torch.float32, device="cpu", default_padding_side="left", **flags)
    except OSError as err:
        raise FileNotFoundError(
            f"could not fetch {name!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Connect to the network (and log in for gated models), or pass a local model "
            "folder or .gguf file, or an embedded name."
        ) from err
    cfg = model.cfg
    state = use_hf_rotary(cfg, {k: v.detach() for k, v in model.state_dict().items()})
    cfg.tokenizer_name = None
    return Converted(cfg=cfg, state=state, tokenizer=model.tokenizer,
                     info={"architecture": cfg.original_architecture})
