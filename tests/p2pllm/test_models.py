"""Model sources, the atomic conversion cache, and model identity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import p2pllm.model_id as model_id_module
import p2pllm.models as models
from p2pllm.model_id import CACHE_FILE, compute_model_id, model_id, model_id_hex, weights_manifest
from p2pllm.models import (
    CATALOGUE,
    ModelNotFound,
    ModelSource,
    UnsupportedModelFolder,
    default_cache_dir,
    describe_folder,
    find_gguf,
    resolve_model,
)

# ------------------------------------------------------------------------------------------- sources


def test_local_folder_resolves_to_its_config_facts(tiny_models: dict[str, ModelSource]) -> None:
    source = resolve_model(tiny_models["qwen2"].path)
    assert source.origin == "local"
    assert (source.model_type, source.num_layers, source.hidden_size, source.vocab_size) == (
        "qwen2",
        6,
        128,
        512,
    )
    assert resolve_model(str(tiny_models["llama"].path)).num_layers == 8


def test_unknown_names_raise_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model("no-such-model", cache_dir=tmp_path)
    assert info.value.name == "no-such-model"
    assert "smollm2-135m" in info.value.known


def test_folder_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    with pytest.raises(UnsupportedModelFolder) as info:
        resolve_model(tmp_path)
    assert "safetensors" in info.value.missing
    (tmp_path / "config.json").unlink()
    with pytest.raises(UnsupportedModelFolder):
        describe_folder(tmp_path, name="x", origin="local")


def test_cache_dir_is_overridable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("P2PLLM_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("P2PLLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "p2pllm" / "models"


def test_default_model_ships_as_a_gguf_file() -> None:
    gguf = find_gguf(CATALOGUE["smollm2-135m"])
    assert gguf is not None and gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    assert find_gguf(CATALOGUE["qwen2.5-0.5b"]) is None


def fake_writer(source: Path, fail_after_copy: bool = False):  # type: ignore[no-untyped-def]
    """A stand-in for the GGUF dequantizer that copies a tiny model folder (and can die half-way)."""

    def write(gguf_path: Path, out: Path, started: float) -> None:
        for file in source.iterdir():
            shutil.copy(file, out / file.name)
        if fail_after_copy:
            raise KeyboardInterrupt("killed mid-conversion")

    return write


def test_conversion_is_atomic_and_runs_once(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_llama_source: ModelSource,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(models, "_write_gguf_folder", fake_writer(tiny_llama_source.path, fail_after_copy=True))
    with pytest.raises(KeyboardInterrupt):
        resolve_model("smollm2-135m", cache_dir=cache)
    assert not (cache / "smollm2-135m").exists()
    assert not list(cache.glob(".smollm2-135m.partial-*"))  # no half cache left behind

    # A partial folder left by a process that was killed outright is swept by the next conversion.
    (cache / ".smollm2-135m.partial-99999-deadbeef").mkdir()
    monkeypatch.setattr(models, "_write_gguf_folder", fake_writer(tiny_llama_source.path))
    source = resolve_model("smollm2-135m", cache_dir=cache)
    assert source.path == (cache / "smollm2-135m").resolve() and source.origin == "gguf"
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == ["smollm2-135m"]
    assert "converting" in capsys.readouterr().err

    def must_not_run(gguf_path: Path, out: Path, started: float) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(models, "_write_gguf_folder", must_not_run)
    assert resolve_model("smollm2-135m", cache_dir=cache) == source


def test_hub_ids_download_once_into_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_llama_source: ModelSource
) -> None:
    import huggingface_hub

    calls: list[str] = []

    def fake_snapshot(repo_id: str, local_dir: Path, allow_patterns: list[str]) -> str:
        calls.append(repo_id)
        for file in tiny_llama_source.path.iterdir():
            shutil.copy(file, Path(local_dir) / file.name)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    source = resolve_model("acme/tiny-llama", cache_dir=tmp_path)
    assert source.origin == "hub" and source.path == (tmp_path / "hub" / "acme--tiny-llama").resolve()
    assert resolve_model("acme/tiny-llama", cache_dir=tmp_path) == source
    assert calls == ["acme/tiny-llama"]


def test_failed_hub_download_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    def offline(repo_id: str, local_dir: Path, allow_patterns: list[str]) -> str:
        (Path(local_dir) / "config.json").write_text("{}")
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelNotFound) as info:
        resolve_model("acme/missing", cache_dir=tmp_path)
    assert "network unreachable" in info.value.reason
    assert [p.name for p in (tmp_path / "hub").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.slow
def test_smollm2_cache_folder_is_complete(smollm2: ModelSource) -> None:
    names = {p.name for p in smollm2.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    assert (smollm2.model_type, smollm2.num_layers, smollm2.hidden_size) == ("llama", 30, 576)
    tensors = load_file(smollm2.path / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert "lm_head.weight" not in tensors  # tied to the embeddings


# ------------------------------------------------------------------------------------------ identity


def copy_model(source: ModelSource, dest: Path) -> Path:
    shutil.copytree(source.path, dest)
    for cached in dest.glob(CACHE_FILE):
        cached.unlink()
    return dest


def test_model_id_is_32_bytes_and_stable(tiny_llama_source: ModelSource, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_source, tmp_path / "m")
    first = model_id(folder)
    assert isinstance(first, bytes) and len(first) == 32
    assert (folder / CACHE_FILE).is_file()
    assert model_id(folder) == first == compute_model_id(folder)
    assert model_id(copy_model(tiny_llama_source, tmp_path / "again")) == first  # independent of location
    assert model_id_hex(folder) == "0x" + first.hex()


def test_model_id_second_call_uses_the_cache(
    tiny_llama_source: ModelSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_model(tiny_llama_source, tmp_path / "m")
    first = model_id(folder)

    def no_hashing(path: Path) -> bytes:
        raise AssertionError("hashed again")

    monkeypatch.setattr(model_id_module, "compute_model_id", no_hashing)
    assert model_id(folder) == first


def test_one_changed_weight_changes_the_id(tiny_llama_source: ModelSource, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_source, tmp_path / "m")
    before = model_id(folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.5.mlp.down_proj.weight"][3, 7] += 1e-3
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    after = model_id(folder)  # the cache notices the rewritten file
    assert after != before and after == compute_model_id(folder)


def test_architecture_config_changes_the_id_but_bookkeeping_does_not(
    tiny_llama_source: ModelSource, tmp_path: Path
) -> None:
    folder = copy_model(tiny_llama_source, tmp_path / "m")
    before = compute_model_id(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_version": "9.9.9", "use_cache": False}))
    assert compute_model_id(folder) == before
    (folder / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert compute_model_id(folder) != before


def test_id_does_not_depend_on_how_tensors_are_split_into_files(
    tiny_models: dict[str, ModelSource], tmp_path: Path
) -> None:
    sharded = tiny_models["qwen2"]
    assert (sharded.path / "model.safetensors.index.json").is_file()
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(sharded.path / "config.json", single / "config.json")
    merged: dict[str, torch.Tensor] = {}
    for file in sorted(sharded.path.glob("model-*.safetensors")):
        merged.update(load_file(file))
    save_file(merged, single / "model.safetensors", metadata={"format": "pt"})
    assert compute_model_id(single) == compute_model_id(sharded.path)
    assert len(weights_manifest(single)) == len(merged)


def test_unwritable_folder_still_gets_an_id(
    tiny_llama_source: ModelSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_model(tiny_llama_source, tmp_path / "m")

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "read-only model folder")

    monkeypatch.setattr(model_id_module.os, "replace", refuse)
    assert model_id(folder) == compute_model_id(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]


@pytest.mark.slow
def test_smollm2_id_is_stable(smollm2: ModelSource) -> None:
    assert model_id(smollm2.path) == model_id(smollm2.path) == compute_model_id(smollm2.path)
