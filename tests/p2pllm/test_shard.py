"""Sharded execution is token-for-token exact against transformers' own `generate(do_sample=False)`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

import p2pllm.shard as shard_module
from devkit.reference import BrokenChain, generate, naive_generate, prefill
from p2pllm.head import NoTokenizer, load_head
from p2pllm.models import ModelSource, describe_folder
from p2pllm.shard import (
    DeviceUnavailable,
    MissingWeights,
    ShardRangeError,
    UnsupportedArchitecture,
    layer_types_of,
    load_shard,
    resolve_device,
    resolve_dtype,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [1, 17, 99, 250, 3, 77, 402, 11, 5, 300, 42, 8]
NEW_TOKENS = 32
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def hf_generate(model: PreTrainedModel, prompt: Sequence[int], eos: Sequence[int] = ()) -> list[int]:
    """transformers' greedy generate; only the new tokens."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([list(prompt)], device=device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            eos_token_id=list(eos) or None,
            pad_token_id=0,
        )
    return [int(t) for t in out[0, len(prompt) :]]


def hf_logits(model: PreTrainedModel, prompt: Sequence[int]) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(torch.tensor([list(prompt)], device=device)).logits


def splits_for(n: int) -> list[list[tuple[int, int]]]:
    return [[(0, n)], [(0, n // 2), (n // 2, n)], [(0, 1), (1, n - 2), (n - 2, n)], [(0, n - 1), (n - 1, n)]]


@contextmanager
def recorded_reads() -> Iterator[list[str]]:
    """Names of every tensor read through safetensors' safe_open while inside the block."""
    names: list[str] = []
    real = shard_module.safe_open

    class Recording:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self._inner = real(*args, **kwargs)

        def __enter__(self) -> Recording:
            self._handle = self._inner.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self._inner.__exit__(*exc)

        def keys(self) -> list[str]:
            return list(self._handle.keys())

        def get_tensor(self, name: str) -> torch.Tensor:
            names.append(name)
            return self._handle.get_tensor(name)

    shard_module.safe_open = Recording  # type: ignore[assignment,misc]
    try:
        yield names
    finally:
        shard_module.safe_open = real


# ------------------------------------------------------------------------------------ tiny models, fp32


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_tiny_splits_match_transformers_generate(tiny_models: dict[str, ModelSource], kind: str) -> None:
    source = tiny_models[kind]
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    expected = hf_generate(model, PROMPT)
    expected_logits = hf_logits(model, PROMPT)
    assert len(expected) == NEW_TOKENS and len(set(expected)) > 8  # a real sequence, not one repeated token
    head = load_head(source)
    for split in splits_for(source.num_layers):
        shards = [load_shard(source, start, end) for start, end in split]
        assert generate(head, shards, PROMPT, NEW_TOKENS) == expected, split
        logits = prefill(head, shards, [s.new_cache() for s in shards], torch.tensor([PROMPT]))
        assert torch.allclose(logits, expected_logits, atol=1e-4, rtol=0), split
    assert naive_generate(head, shards, PROMPT, NEW_TOKENS) == expected


def test_generation_stops_after_eos_like_transformers(tiny_llama_source: ModelSource) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_source.path, dtype=torch.float32).eval()
    free_run = hf_generate(model, PROMPT)
    eos = free_run[5]  # pretend the sixth generated token ends the sequence
    expected = hf_generate(model, PROMPT, eos=[eos])
    assert expected == free_run[: free_run.index(eos) + 1]
    head = load_head(tiny_llama_source)
    shards = [load_shard(tiny_llama_source, 0, 3), load_shard(tiny_llama_source, 3, 8)]
    assert generate(head, shards, PROMPT, NEW_TOKENS, eos_token_ids=[eos]) == expected
    assert naive_generate(head, shards, PROMPT, NEW_TOKENS, eos_token_ids=[eos]) == expected


def test_qwen2_sliding_window_is_exercised(tiny_models: dict[str, ModelSource], tmp_path: Path) -> None:
    """The same weights without the sliding window generate differently, so the exactness test above bites."""
    source = tiny_models["qwen2"]
    kinds = layer_types_of(load_shard(source, 0, source.num_layers).config)
    assert "sliding_attention" in kinds and "full_attention" in kinds
    full = tmp_path / "full"
    shutil.copytree(source.path, full)
    config = json.loads((full / "config.json").read_text())
    config.update(use_sliding_window=False, layer_types=["full_attention"] * source.num_layers)
    (full / "config.json").write_text(json.dumps(config))
    windowed = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    unwindowed = AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32).eval()
    assert hf_generate(windowed, PROMPT) != hf_generate(unwindowed, PROMPT)


def test_shard_layer_types_are_sliced(tiny_models: dict[str, ModelSource]) -> None:
    source = tiny_models["qwen2"]  # layers 0-1 full, 2-5 sliding
    assert load_shard(source, 1, 3).layer_types == ("full_attention", "sliding_attention")
    assert load_shard(source, 3, 6).config.layer_types == ["sliding_attention"] * 3


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_matches_transformers_and_keeps_rotary_fp32(
    tiny_models: dict[str, ModelSource], dtype: str
) -> None:
    source = tiny_models["llama"]
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=resolve_dtype(dtype)).eval()
    shards = [load_shard(source, 0, 5, dtype=dtype), load_shard(source, 5, 8, dtype=dtype)]
    assert all(s.dtype == resolve_dtype(dtype) for s in shards)
    assert all(s.rotary_emb.inv_freq.dtype == torch.float32 for s in shards)
    assert generate(load_head(source, dtype=dtype), shards, PROMPT, NEW_TOKENS) == hf_generate(model, PROMPT)


# ------------------------------------------------------------------------------------ loading


def test_shard_reads_only_its_own_tensors(tiny_llama_source: ModelSource) -> None:
    with recorded_reads() as names:
        shard = load_shard(tiny_llama_source, 2, 5)
    layers = {int(n.split(".")[2]) for n in names}
    assert layers == {2, 3, 4}
    assert all(n.startswith("model.layers.") for n in names)
    assert len(names) == 3 * 9  # 7 linear weights + 2 norms per Llama layer
    assert [layer.self_attn.layer_idx for layer in shard.layers] == [0, 1, 2]
    assert (shard.start, shard.end, shard.config.num_hidden_layers) == (2, 5, 3)


def test_shard_reads_only_needed_files_of_an_index(tiny_models: dict[str, ModelSource]) -> None:
    source = tiny_models["qwen2"]
    index = json.loads((source.path / "model.safetensors.index.json").read_text())["weight_map"]
    with recorded_reads() as names:
        load_shard(source, 4, 5)
    assert sorted(names) == sorted(n for n in index if n.startswith("model.layers.4."))


def test_head_reads_only_embeddings_norm_and_lm_head(tiny_models: dict[str, ModelSource]) -> None:
    with recorded_reads() as names:
        untied = load_head(tiny_models["llama"])
    assert sorted(names) == ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"]
    assert not untied.tied
    with recorded_reads() as names:
        tied = load_head(tiny_models["qwen2"])
    assert sorted(names) == ["model.embed_tokens.weight", "model.norm.weight"]
    assert tied.tied
    with pytest.raises(NoTokenizer):
        tied.encode("no tokenizer in a random model")


@pytest.mark.parametrize(("start", "end"), [(-1, 3), (0, 9), (4, 4), (5, 3), (0, 0), (1.0, 3), (True, 3)])
def test_bad_ranges_raise_a_clear_value_error(tiny_llama_source: ModelSource, start: object, end: object) -> None:
    with pytest.raises(ShardRangeError) as info:
        load_shard(tiny_llama_source, start, end)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert (info.value.start, info.value.end, info.value.num_layers) == (start, end, 8)


def test_broken_chains_are_refused(tiny_llama_source: ModelSource) -> None:
    head = load_head(tiny_llama_source)
    gap = [load_shard(tiny_llama_source, 0, 3), load_shard(tiny_llama_source, 4, 8)]
    short = [load_shard(tiny_llama_source, 0, 7)]
    for shards in (gap, short, []):
        with pytest.raises(BrokenChain):
            generate(head, shards, PROMPT, 2)


def test_unsupported_architecture(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitecture) as info:
        load_shard(tmp_path, 0, 1)
    assert info.value.model_type == "gpt2"
    assert "llama" in info.value.supported


def test_missing_tensor_is_reported(tiny_llama_source: ModelSource, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_source.path, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    source = describe_folder(broken, name="broken", origin="local")
    load_shard(source, 0, 3)  # layers that are all there still load
    with pytest.raises(MissingWeights) as info:
        load_shard(source, 2, 5)
    assert info.value.names == ("model.layers.3.mlp.up_proj.weight",)


def test_devices_and_dtypes_are_validated() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable):
            resolve_device("cuda")
    with pytest.raises(DeviceUnavailable):
        resolve_device("meta")
    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype("float64")


# ------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_cuda_splits_match_transformers_on_cuda(tiny_models: dict[str, ModelSource], kind: str, dtype: str) -> None:
    source = tiny_models[kind]
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=resolve_dtype(dtype)).to("cuda").eval()
    head = load_head(source, device="cuda", dtype=dtype)
    n = source.num_layers
    shards = [
        load_shard(source, 0, 2, device="cuda", dtype=dtype),
        load_shard(source, 2, n, device="cuda", dtype=dtype),
    ]
    assert all(s.device.type == "cuda" and s.rotary_emb.inv_freq.dtype == torch.float32 for s in shards)
    assert generate(head, shards, PROMPT, NEW_TOKENS) == hf_generate(model, PROMPT)
    if dtype == "float32":
        logits = prefill(head, shards, [s.new_cache() for s in shards], torch.tensor([PROMPT], device="cuda"))
        assert torch.allclose(logits, hf_logits(model, PROMPT), atol=1e-4, rtol=0)


@pytest.mark.gpu
@gpu
def test_cuda_auto_device(tiny_llama_source: ModelSource) -> None:
    assert load_shard(tiny_llama_source, 0, 1, device="auto").device.type == "cuda"


# ------------------------------------------------------------------------------------ SmolLM2 (real model)


SMOL_SPLITS = [
    [(0, 30)],
    [(0, 15), (15, 30)],
    [(0, 10), (10, 20), (20, 30)],
    [(0, 7), (7, 20), (20, 30)],
]


@pytest.mark.slow
def test_smollm2_splits_match_transformers_generate(smollm2: ModelSource, smollm2_hf: PreTrainedModel) -> None:
    head = load_head(smollm2)
    prompt = head.encode_chat([{"role": "user", "content": "Write a short poem about the sea."}])
    expected = hf_generate(smollm2_hf, prompt, eos=head.eos_token_ids)
    assert len(expected) == NEW_TOKENS
    expected_logits = hf_logits(smollm2_hf, prompt)
    shards_by_range = {r: load_shard(smollm2, *r) for split in SMOL_SPLITS for r in split}
    for split in SMOL_SPLITS:
        shards = [shards_by_range[r] for r in split]
        assert generate(head, shards, prompt, NEW_TOKENS, head.eos_token_ids) == expected, split
        logits = prefill(head, shards, [s.new_cache() for s in shards], torch.tensor([prompt]))
        assert (logits - expected_logits).abs().max().item() <= 1e-4, split
    uneven = [shards_by_range[r] for r in SMOL_SPLITS[-1]]
    assert naive_generate(head, uneven, prompt, NEW_TOKENS, head.eos_token_ids) == expected


@pytest.mark.slow
def test_smollm2_head_has_tokenizer_and_chat_template(smollm2: ModelSource) -> None:
    head = load_head(smollm2)
    assert head.tied and head.eos_token_ids == (2,)
    ids = head.encode_chat([{"role": "user", "content": "Hi"}])
    text = head.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert head.decode(head.encode("hello world")) == "hello world"


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_sub_span_of_a_shard_equals_a_shard_of_that_span(tiny_models: dict[str, ModelSource], kind: str) -> None:
    source = tiny_models[kind]
    whole = load_shard(source, 0, source.num_layers)
    lo, hi = 1, source.num_layers - 1
    alone = load_shard(source, lo, hi)
    cache_span, cache_alone = whole.new_cache(), alone.new_cache()
    torch.manual_seed(3)
    position = 0
    for tokens in (11, 1, 1, 1):  # past the Qwen2 sliding window of 8
        hidden = torch.randn(1, tokens, source.hidden_size)
        positions = torch.arange(position, position + tokens)
        with torch.inference_mode():
            got = whole(hidden, positions, cache_span, span=(lo, hi))
            want = alone(hidden, positions, cache_alone)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        position += tokens
    with pytest.raises(ShardRangeError):
        whole(hidden, positions, whole.new_cache(), span=(0, source.num_layers + 1))


def test_device_and_dtype_follow_a_move(tiny_llama_source: ModelSource) -> None:
    shard = load_shard(tiny_llama_source, 0, 2)
    assert (shard.device.type, shard.dtype) == ("cpu", torch.float32)
    shard.to(torch.bfloat16)
    assert shard.dtype == torch.bfloat16
    out = shard(torch.randn(1, 3, shard.hidden_size, dtype=torch.bfloat16), torch.arange(3), shard.new_cache())
    assert out.dtype == torch.bfloat16
    shard.float()
    assert shard.dtype == torch.float32
