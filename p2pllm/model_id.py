"""Model identity: 32 bytes that name the exact weights and architecture a node serves.

`model_id(path)` is sha256 over a canonical manifest: the config's architecture fields (``config.json`` minus
bookkeeping keys such as the transformers version) and, for every tensor sorted by name, its dtype, shape and
the sha256 of its raw bytes as stored in the safetensors file(s). How tensors are split across files does not
matter; one changed weight changes the id. The result is cached beside the weights in
``p2pllm_model_id.json``, keyed by each file's size, mtime, ctime and inode, so the second call only stats
files.

Client and node both compute it and the on-chain offer carries it. Boundary: reads files with the standard
library only (safetensors headers are parsed by hand, bytes are hashed through mmap); no torch, no HTTP, no
payment.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pllm.models import CONFIG_FILE, read_config, weight_files

ID_VERSION = "p2pllm-model-id/v1"
CACHE_FILE = "p2pllm_model_id.json"

# Keys of config.json that describe how a checkpoint was saved or used, not what it computes.
NON_ARCHITECTURE_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "_model_name_or_path",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "torch_dtype",
        "dtype",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "unk_token_id",
    }
)


class ModelIdError(ValueError):
    """A weights file could not be read as safetensors."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class TensorDigest:
    """One manifest line: a tensor's name, stored dtype, shape and sha256 of its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    sha256: str

    def line(self) -> str:
        return f"{self.name}\t{self.dtype}\t{list(self.shape)}\t{self.sha256}"


def model_id(path: str | Path) -> bytes:
    """The 32-byte identity of the model folder at `path` (cached beside the weights)."""
    folder = Path(path)
    stamp = _file_stamp(folder)
    cached = _read_cached(folder, stamp)
    if cached is not None:
        return cached
    digest = compute_model_id(folder)
    _write_cached(folder, stamp, digest)
    return digest


def model_id_hex(path: str | Path) -> str:
    """`model_id` as ``0x``-prefixed hex, the form used in offers and JSON."""
    return "0x" + model_id(path).hex()


def compute_model_id(path: Path) -> bytes:
    """`model_id` without the cache: hash every tensor now."""
    h = hashlib.sha256()
    h.update(ID_VERSION.encode() + b"\n")
    h.update(_canonical_json(architecture_fields(read_config(path))) + b"\n")
    for entry in sorted(weights_manifest(path), key=lambda d: d.name):
        h.update(entry.line().encode() + b"\n")
    return h.digest()


def architecture_fields(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without bookkeeping keys (recursively, for nested text configs)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in NON_ARCHITECTURE_KEYS:
            continue
        out[key] = architecture_fields(value) if isinstance(value, dict) else value
    return out


def weights_manifest(path: Path) -> list[TensorDigest]:
    """Per-tensor digests over all safetensors files of the folder."""
    entries: list[TensorDigest] = []
    for file in weight_files(path):
        entries.extend(_file_manifest(file))
    names = [e.name for e in entries]
    if len(names) != len(set(names)):
        raise ModelIdError(path, "a tensor name appears in more than one weights file")
    return entries


# ----------------------------------------------------------------------------------------------- internal


def _file_manifest(file: Path) -> list[TensorDigest]:
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise ModelIdError(file, "truncated safetensors header")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > size - 8:
            raise ModelIdError(file, f"header length {header_len} exceeds file size {size}")
        header: dict[str, Any] = json.loads(f.read(header_len))
        tensors = {name: info for name, info in header.items() if name != "__metadata__"}
        if not tensors:
            return []
        base = 8 + header_len
        entries: list[TensorDigest] = []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                for name, info in tensors.items():
                    begin, end = (int(x) for x in info["data_offsets"])
                    if not 0 <= begin <= end <= size - base:
                        raise ModelIdError(file, f"tensor {name} lies outside the file")
                    digest = hashlib.sha256(view[base + begin : base + end]).hexdigest()
                    entries.append(TensorDigest(name, str(info["dtype"]), tuple(info["shape"]), digest))
            finally:
                view.release()
        return entries


def _file_stamp(folder: Path) -> dict[str, list[int]]:
    files = [folder / CONFIG_FILE, *weight_files(folder)]
    return {f.name: [(st := f.stat()).st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] for f in files}


def _read_cached(folder: Path, stamp: dict[str, list[int]]) -> bytes | None:
    try:
        with open(folder / CACHE_FILE, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if data.get("version") != ID_VERSION or data.get("files") != stamp:
        return None
    try:
        digest = bytes.fromhex(str(data["model_id"]))
    except (KeyError, ValueError):
        return None
    return digest if len(digest) == 32 else None


def _write_cached(folder: Path, stamp: dict[str, list[int]], digest: bytes) -> None:
    tmp = folder / f".{CACHE_FILE}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": ID_VERSION, "files": stamp, "model_id": digest.hex()}, f, indent=2)
        os.replace(tmp, folder / CACHE_FILE)
    except OSError:
        # A read-only model folder is fine: the id is simply recomputed next time.
        tmp.unlink(missing_ok=True)


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
