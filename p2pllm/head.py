"""The client's end of the model: token embeddings, final norm, LM head, tokenizer and chat template.

`load_head(model)` reads only ``embed_tokens``, the final norm and (unless tied to the embeddings) the LM
head, so a client never holds any decoder layer. `Head.embed` turns token ids into the hidden states sent to
the first hop; `Head.logits` turns the last hop's hidden states into next-token logits, and `Head.greedy` into
the greedy next token (the argmax of those logits, exactly; on CPU in fp32 through `p2pllm.argmax`'s fp16
prefilter, ~4 ms instead of ~10 for SmolLM2's head on one core).

Boundary: knows tensors, tokenizers and chat templates; knows nothing about routes, hops, HTTP or payment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from p2pllm.argmax import ExactArgmax
from p2pllm.models import ModelSource
from p2pllm.shard import (
    architecture,
    layer_prefix,
    load_config,
    model_path,
    read_tensors,
    resolve_device,
    resolve_dtype,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class NoTokenizer(RuntimeError):
    """The model folder ships no tokenizer, so text cannot be encoded or decoded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path} has no tokenizer")


class Head(nn.Module):
    """Embeddings in, logits out; everything a client runs locally."""

    def __init__(
        self,
        config: PretrainedConfig,
        path: Path,
        embed_tokens: nn.Embedding,
        norm: nn.Module,
        lm_head: nn.Linear,
        tokenizer: PreTrainedTokenizerBase | None,
        eos_token_ids: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.config = config
        self.path = path
        self.embed_tokens = embed_tokens
        self.norm = norm
        self.lm_head = lm_head
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self._argmax: ExactArgmax | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.embed_tokens.weight

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(batch, tokens)`` -> hidden states ``(batch, tokens, hidden)``."""
        return self.embed_tokens(token_ids.to(self.device))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states after the last layer -> logits ``(..., vocab)`` (final norm, then LM head)."""
        return self.lm_head(self.norm(hidden))

    def greedy(self, hidden: torch.Tensor) -> int:
        """The last position's greedy next token: `int(self.logits(hidden)[..., -1, :].argmax())`, lowest index
        first among equal maxima."""
        last = self.norm(hidden[..., -1:, :]).reshape(-1)
        weight = self.lm_head.weight
        if weight.dtype != torch.float32 or weight.device.type != "cpu" or self.lm_head.bias is not None:
            return int(self.lm_head(last).argmax())
        if self._argmax is None:
            self._argmax = ExactArgmax(weight.detach())
        return self._argmax(last)

    def encode(self, text: str) -> list[int]:
        """Plain text -> token ids (no special tokens added)."""
        return list(self._tokenizer().encode(text, add_special_tokens=False))

    def encode_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Chat messages ``[{"role": ..., "content": ...}]`` -> prompt token ids via the model's template."""
        rendered = self._tokenizer().apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=add_generation_prompt, tokenize=False
        )
        return self.encode(str(rendered))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Token ids -> text."""
        return str(self._tokenizer().decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def _tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise NoTokenizer(self.path)
        return self.tokenizer


def load_head(
    model: ModelSource | str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    *,
    with_tokenizer: bool = True,
) -> Head:
    """Embeddings, final norm and LM head of `model` (and its tokenizer when the folder has one)."""
    path = model_path(model)
    config = load_config(path)
    arch = architecture(config.model_type)
    target_device, target_dtype = resolve_device(device), resolve_dtype(dtype)
    prefix = layer_prefix(path)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    wanted = {f"{prefix}embed_tokens.weight": "embed", f"{prefix}norm.weight": "norm"}
    if not tied:
        wanted["lm_head.weight"] = "lm_head"
    tensors = read_tensors(path, wanted, device=target_device, dtype=target_dtype)
    embed = nn.Embedding.from_pretrained(tensors["embed"], freeze=True, padding_idx=config.pad_token_id)
    with torch.device("meta"):
        norm = arch.rms_norm(config.hidden_size, eps=config.rms_norm_eps)
    norm.load_state_dict({"weight": tensors["norm"]}, assign=True)
    lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device="meta")
    lm_head.weight = embed.weight if tied else nn.Parameter(tensors["lm_head"], requires_grad=False)
    norm.requires_grad_(False)
    tokenizer = _load_tokenizer(path) if with_tokenizer else None
    head = Head(config, path, embed, norm, lm_head, tokenizer, eos_token_ids(path, config))
    return head.eval()


def eos_token_ids(path: Path, config: PretrainedConfig) -> tuple[int, ...]:
    """End-of-sequence ids from ``generation_config.json`` (as ``generate`` uses them), else the config."""
    value: Any = None
    generation = path / "generation_config.json"
    if generation.is_file():
        with open(generation, encoding="utf-8") as f:
            value = json.load(f).get("eos_token_id")
    if value is None:
        value = getattr(config, "eos_token_id", None)
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list) else (int(value),)


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase | None:
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path)
    return tokenizer
