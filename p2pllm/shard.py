"""A shard: layers ``[start, end)`` of a decoder-only transformer, loaded alone and run with its own cache.

`load_shard` reads only the tensors of its layers from the safetensors file(s), builds the architecture's own
decoder layer classes from transformers (no copied block code), renumbers them ``0..k-1`` so that a private
``DynamicCache(config=shard_config)`` indexes them, and builds the rotary module in fp32 after the cast.
`Shard.forward(hidden, positions, cache)` maps hidden states to hidden states: a prefill of many tokens or a
decode of one with a cache, or a full recompute with ``cache=None``. Supported: Llama (SmolLM2), Qwen2 (with
``layer_types`` / sliding window), Mistral.

Boundary: knows tensors, configs and transformers' layer API; knows nothing about sessions, budgets, HTTP,
the wire format or payment (see `node.executor`, `p2pllm.codec`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, DynamicCache, PretrainedConfig
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from p2pllm.models import INDEX_WEIGHTS_FILE, SINGLE_WEIGHTS_FILE, ModelSource, resolve_model

# ------------------------------------------------------------------------------------------------- errors


class ShardRangeError(ValueError):
    """The half-open range ``[start, end)`` is not a non-empty sub-range of ``[0, num_layers)``."""

    def __init__(self, start: object, end: object, num_layers: int) -> None:
        self.start = start
        self.end = end
        self.num_layers = num_layers
        super().__init__(f"bad layer range [{start}, {end}) for a model of {num_layers} layers")


class UnsupportedArchitecture(ValueError):
    """The config's ``model_type`` has no known decoder layer class."""

    def __init__(self, model_type: str) -> None:
        self.model_type = model_type
        self.supported = tuple(sorted(ARCHITECTURES))
        super().__init__(f"model_type {model_type!r} is not supported (supported: {', '.join(self.supported)})")


class MissingWeights(ValueError):
    """The weights files lack tensors the requested modules need."""

    def __init__(self, path: Path, names: tuple[str, ...]) -> None:
        self.path = path
        self.names = names
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        super().__init__(f"{path} lacks {len(names)} tensor(s): {shown}")


class DeviceUnavailable(ValueError):
    """A device was asked for that this machine does not have."""

    def __init__(self, device: str) -> None:
        self.device = device
        super().__init__(f"device {device!r} is not available here")


# -------------------------------------------------------------------------------------------------- types

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# model_type -> class name prefix inside transformers.models.<model_type>.modeling_<model_type>
ARCHITECTURES: dict[str, str] = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}

ATTN_IMPLEMENTATION = "sdpa"
FULL = "full_attention"
SLIDING = "sliding_attention"


@dataclass(frozen=True)
class Architecture:
    """The transformers classes one architecture is built from."""

    model_type: str
    decoder_layer: type[nn.Module]
    rms_norm: type[nn.Module]
    rotary_embedding: type[nn.Module]


class Shard(nn.Module):
    """Decoder layers ``[start, end)`` renumbered ``0..k-1``, with the rotary module they share."""

    def __init__(
        self,
        config: PretrainedConfig,
        start: int,
        end: int,
        layers: nn.ModuleList,
        rotary_emb: nn.Module,
        layer_types: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.config = config
        self.start = start
        self.end = end
        self.layers = layers
        self.rotary_emb = rotary_emb
        self.layer_types = layer_types
        # Read on every request (validation, codec) and step: plain attributes, not a walk over the module tree
        # (`next(parameters())`) or a slice of the ModuleList (which builds a new ModuleList) each time.
        self._layer_seq = tuple(layers)
        self._hidden_size = int(config.hidden_size)
        self._placement()

    def _placement(self) -> None:
        first = next(self.layers.parameters())
        self._device, self._dtype = first.device, first.dtype

    def _apply(self, *args: Any, **kwargs: Any) -> Shard:
        """`.to()`, `.cuda()`, `.half()`... go through here: keep the cached device and dtype true."""
        result = super()._apply(*args, **kwargs)
        self._placement()
        return result

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for this shard's layers (sliding-window aware)."""
        return DynamicCache(config=self.config)

    def forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache | None = None,
        span: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Hidden states ``(batch, tokens, hidden)`` at absolute `positions` ``(tokens,)`` through layers.

        `span` = absolute ``(start, end)`` runs only that contiguous part of the shard (a route may use part
        of a node's range); a cache must always be used with the same span."""
        lo, hi = self.local_span(span)
        position_ids = positions.view(1, -1)
        masks = self._masks(hidden, position_ids, cache, lo, hi)
        position_embeddings = self.rotary_emb(hidden, position_ids)
        for layer, kind in zip(self._layer_seq[lo:hi], self.layer_types[lo:hi], strict=True):
            hidden = layer(
                hidden,
                attention_mask=masks[kind],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=cache is not None,
            )
        return hidden

    def local_span(self, span: tuple[int, int] | None) -> tuple[int, int]:
        """Absolute ``(start, end)`` inside this shard -> local layer indices; the whole shard for None."""
        if span is None:
            return 0, len(self.layers)
        start, end = span
        if not self.start <= start < end <= self.end:
            raise ShardRangeError(start, end, int(self.config.num_hidden_layers))
        return start - self.start, end - self.start

    def _masks(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache | None, lo: int, hi: int
    ) -> dict[str, Any]:
        # The masks read the cache's length from a layer of their kind: name one inside the span, since layers
        # outside it never fill their cache in a sub-span session.
        args = {"config": self.config, "inputs_embeds": hidden, "attention_mask": None, "cache": cache,
                "position_ids": position_ids}
        kinds = self.layer_types[lo:hi]
        masks: dict[str, Any] = {}
        if FULL in kinds:
            masks[FULL] = create_causal_mask(**args, layer_idx=lo + kinds.index(FULL))
        if SLIDING in kinds:
            masks[SLIDING] = create_sliding_window_causal_mask(**args, layer_idx=lo + kinds.index(SLIDING))
        return masks


# ----------------------------------------------------------------------------------------------- external


def load_shard(
    model: ModelSource | str | Path,
    start: int,
    end: int,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
) -> Shard:
    """Layers ``[start, end)`` of `model`, reading only their tensors, on `device` in `dtype`."""
    path = model_path(model)
    config = load_config(path)
    arch = architecture(config.model_type)
    check_range(start, end, int(config.num_hidden_layers))
    target_device, target_dtype = resolve_device(device), resolve_dtype(dtype)
    sub = shard_config(config, start, end)
    with torch.device("meta"):
        layers = nn.ModuleList(arch.decoder_layer(sub, i) for i in range(end - start))
    prefix = layer_prefix(path)
    wanted = {_stored_name(prefix, start, local): local for local in layers.state_dict()}
    tensors = read_tensors(path, wanted, device=target_device, dtype=target_dtype)
    layers.load_state_dict(tensors, strict=True, assign=True)
    layers.requires_grad_(False)
    layers.eval()
    _check_materialized(layers)
    rotary = build_rotary(arch, sub, target_device)
    return Shard(sub, start, end, layers, rotary, layer_types_of(sub))


def random_shard(
    config: PretrainedConfig,
    start: int,
    end: int,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
) -> Shard:
    """Layers ``[start, end)`` of the architecture `config` describes, randomly initialised (nothing is read):
    the compute and memory of a real shard of that shape, for measuring widths no catalogue model has."""
    config._attn_implementation = ATTN_IMPLEMENTATION
    arch = architecture(config.model_type)
    check_range(start, end, int(config.num_hidden_layers))
    target_device, target_dtype = resolve_device(device), resolve_dtype(dtype)
    sub = shard_config(config, start, end)
    torch.manual_seed(seed)
    with torch.device(target_device):
        layers = nn.ModuleList(arch.decoder_layer(sub, i) for i in range(end - start))
    layers.to(dtype=target_dtype)
    layers.requires_grad_(False)
    layers.eval()
    return Shard(sub, start, end, layers, build_rotary(arch, sub, target_device), layer_types_of(sub))


def load_config(path: Path) -> PretrainedConfig:
    """The model's config with the attention implementation pinned to what transformers uses by default."""
    config = AutoConfig.from_pretrained(path)
    config._attn_implementation = ATTN_IMPLEMENTATION
    return config


def architecture(model_type: str) -> Architecture:
    """The transformers classes for `model_type` (imported from transformers, never copied)."""
    prefix = ARCHITECTURES.get(model_type)
    if prefix is None:
        raise UnsupportedArchitecture(model_type)
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    return Architecture(
        model_type=model_type,
        decoder_layer=getattr(module, f"{prefix}DecoderLayer"),
        rms_norm=getattr(module, f"{prefix}RMSNorm"),
        rotary_embedding=getattr(module, f"{prefix}RotaryEmbedding"),
    )


def check_range(start: object, end: object, num_layers: int) -> None:
    """Raise `ShardRangeError` unless ``0 <= start < end <= num_layers`` with integer bounds."""
    if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool):
        raise ShardRangeError(start, end, num_layers)
    if not 0 <= start < end <= num_layers:
        raise ShardRangeError(start, end, num_layers)


def shard_config(config: PretrainedConfig, start: int, end: int) -> PretrainedConfig:
    """A copy of `config` describing only layers ``[start, end)`` (``layer_types`` sliced where present)."""
    data = config.to_dict()
    data["num_hidden_layers"] = end - start
    if data.get("layer_types") is not None:
        data["layer_types"] = list(data["layer_types"][start:end])
    sub = type(config).from_dict(data)
    sub._attn_implementation = config._attn_implementation
    return sub


def layer_types_of(config: PretrainedConfig) -> tuple[str, ...]:
    """Each layer's attention kind, as the architecture's own model class decides it."""
    n = int(config.num_hidden_layers)
    explicit = getattr(config, "layer_types", None)
    if explicit is not None:
        return tuple(str(t) for t in explicit)
    kind = SLIDING if getattr(config, "sliding_window", None) is not None else FULL
    return (kind,) * n


def build_rotary(arch: Architecture, config: PretrainedConfig, device: torch.device) -> nn.Module:
    """A fresh rotary module on `device`; its ``inv_freq`` stays fp32 whatever the layers' dtype."""
    rotary = arch.rotary_embedding(config=config)
    return rotary.to(device=device)


def resolve_device(device: str | torch.device) -> torch.device:
    """``cpu``, ``cuda[:n]`` or ``auto`` (CUDA when present)."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(str(device))
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceUnavailable(str(device))
    return resolved


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``float32``, ``bfloat16`` or ``float16`` (names or torch dtypes)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def model_path(model: ModelSource | str | Path) -> Path:
    """The folder of `model`, resolving catalogue names and hub ids through `resolve_model`."""
    if isinstance(model, ModelSource):
        return model.path
    if Path(model).expanduser().is_dir():
        return Path(model).expanduser()
    return resolve_model(model).path


def layer_prefix(path: Path) -> str:
    """``"model."`` when tensors are named ``model.layers.N...`` (the causal-LM layout), else ``""``."""
    names = _tensor_locations(path)
    return "model." if any(n.startswith("model.") for n in names) else ""


def read_tensors(
    path: Path,
    wanted: dict[str, str],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Read only the stored tensors named by `wanted`'s keys, returned under its values, cast and moved."""
    locations = _tensor_locations(path)
    missing = tuple(sorted(n for n in wanted if n not in locations))
    if missing:
        raise MissingWeights(path, missing)
    by_file: dict[Path, list[str]] = {}
    for name in wanted:
        by_file.setdefault(locations[name], []).append(name)
    out: dict[str, torch.Tensor] = {}
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in names:
                out[wanted[name]] = _cast(f.get_tensor(name), device, dtype)
    return out


# ----------------------------------------------------------------------------------------------- internal


def _tensor_locations(path: Path) -> dict[str, Path]:
    index = path / INDEX_WEIGHTS_FILE
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            weight_map: dict[str, str] = json.load(f)["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    single = path / SINGLE_WEIGHTS_FILE
    with safe_open(str(single), framework="pt", device="cpu") as f:
        return dict.fromkeys(f.keys(), single)


def _stored_name(prefix: str, start: int, local: str) -> str:
    """``"3.mlp.up_proj.weight"`` of a shard starting at 10 -> ``"model.layers.13.mlp.up_proj.weight"``."""
    index, rest = local.split(".", 1)
    return f"{prefix}layers.{start + int(index)}.{rest}"


def _cast(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if tensor.is_floating_point() and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor.to(device)


def _check_materialized(modules: nn.Module) -> None:
    leftovers: Iterable[str] = [
        n for n, t in (*modules.named_parameters(), *modules.named_buffers()) if t.device.type == "meta"
    ]
    if leftovers:
        raise RuntimeError(f"tensors left unloaded after assignment: {sorted(leftovers)}")
