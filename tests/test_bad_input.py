"""Bad input fails at once with one line that names the bad value and says what to do (issue: bad input)."""

import contextlib
import json
import math
import shutil
import signal
import time
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from helpers.activations import ActivationCache, CacheError, Manifest, cache_activations
from helpers.hooks import Intervention
from helpers.runner import main as runner_main

FAKE_MODEL = SimpleNamespace(n_layers=24, name="m", d_model=8)


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail (instead of hanging CI) if the block runs longer than `seconds`: the hang cases regress loudly."""
    def fail(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s: a hang has come back")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---- interventions -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vector,message", [
    (torch.zeros(8), "zero vector"),
    (torch.full((8,), math.nan), "NaN or infinite"),
    (torch.tensor([1.0, math.inf] + [0.0] * 6), "NaN or infinite"),
    ([1.0] * 8, "must be a torch.Tensor"),
])
def test_bad_ablation_directions(vector, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Intervention(ablate=vector)


def test_wrong_shapes_and_layers_are_named_when_the_intervention_meets_the_model():
    with pytest.raises(ValueError, match=r"add= has shape \(1,\), but this model needs \[8\]"):
        Intervention(add=torch.ones(1), add_layer=3).check(d_model=8, n_layers=24)
    with pytest.raises(ValueError, match=r"ablate= has shape \(2, 7\)"):  # [k, d_model] is a subspace; d_model is 8
        Intervention(ablate=torch.eye(2, 7)).check(d_model=8, n_layers=24)
    with pytest.raises(ValueError, match=r"ablate= has shape \(2, 2, 8\)"):
        Intervention(ablate=torch.ones(2, 2, 8)).check(d_model=8, n_layers=24)
    Intervention(ablate=torch.eye(2, 8)).check(d_model=8, n_layers=24)  # two directions: a valid subspace
    with pytest.raises(ValueError, match="edit_layer 24 is out of range"):
        Intervention(edit=lambda x: x, edit_layer=24).check(d_model=8, n_layers=24)
    with pytest.raises(ValueError, match="add_layer 30 is out of range.*0..23"):
        Intervention(add=torch.ones(8), add_layer=30).check(d_model=8, n_layers=24)
    with pytest.raises(ValueError, match="needs both"):
        Intervention(add=torch.ones(8))


# ---- the runner ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--preset", "nope"], "unknown preset 'nope'; valid presets"),
    (["--preset", "smoke", "--only", "03", "99"], "no notebook numbered ['99']"),
    (["--preset", "smoke", "--only"], "expected at least one argument"),
])
def test_runner_rejects_bad_arguments_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        runner_main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ---- activation caches ---------------------------------------------------------------------------------------
def write_cache(folder, shard_tokens=(40, 40), d=8, manifest_text=None):
    folder.mkdir(parents=True)
    m = Manifest(model="m", hook_name="blocks.1.hook_resid_pre", corpus="webtext", split="train", source="offline",
                 d_model=d, context_size=16, dtype="float16", target_tokens=sum(shard_tokens), batch_windows=1,
                 drop_first=True, outlier_factor=10.0, system_prompt=None, seed=0, complete=True,
                 tokens=sum(shard_tokens), versions={})
    for i, n in enumerate(shard_tokens):
        name = f"shard_{i:05d}.safetensors"
        save_file({"activations": torch.randn(n, d).half(), "token_ids": torch.zeros(n, dtype=torch.int32),
                   "positions": torch.arange(n, dtype=torch.int32)}, str(folder / name))
        m.shards.append({"file": name, "tokens": n, "windows": 1})
    (folder / "manifest.json").write_text(manifest_text if manifest_text is not None else json.dumps(asdict(m)))
    return folder


def test_a_batch_larger_than_the_cache_is_an_error_not_an_endless_loop(tmp_path):
    cache = ActivationCache(write_cache(tmp_path / "c"))
    with time_limit(5), pytest.raises(CacheError, match="a batch of 1,000 does not fit.*smaller train_batch_size_tokens"):
        next(cache.data_provider(1000))
    with time_limit(5):
        assert next(cache.data_provider(16)).shape == (16, 8)
        assert next(cache.data_provider(80)).shape == (80, 8), "a batch as large as the cache still comes"


def test_empty_and_garbage_manifests_and_truncated_shards_name_the_file_and_the_remedy(tmp_path):
    with pytest.raises(CacheError, match=r"manifest.json is damaged.*Delete .* rerun notebook 01"):
        ActivationCache(write_cache(tmp_path / "garbage", manifest_text="{not json"))
    with pytest.raises(CacheError, match="is damaged"):
        ActivationCache(write_cache(tmp_path / "partial", manifest_text='{"model": "m"}'))
    folder = write_cache(tmp_path / "cut")
    shard = folder / "shard_00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CacheError, match=r"shard_00001.safetensors cannot be read.*Delete"):
        ActivationCache(folder).shard(1)
    empty = write_cache(tmp_path / "empty", shard_tokens=())
    with pytest.raises(CacheError, match="holds no tokens"):
        ActivationCache(empty)


@pytest.mark.parametrize("kwargs,message", [
    ({"n_tokens": 0}, "n_tokens must be an integer >= 1"),
    ({"n_tokens": -5}, "n_tokens must be an integer >= 1"),
    ({"n_tokens": 64, "batch_windows": 0}, "batch_windows must be an integer >= 1"),
    ({"n_tokens": 64, "context_size": 1}, "context_size must be an integer >= 2"),
    ({"n_tokens": 64, "context_size": 2}, "keeps no token"),
    ({"n_tokens": 64, "outlier_factor": 0}, "outlier_factor must be None or a number > 1"),
    ({"n_tokens": 64, "dtype": "float99"}, "dtype must be"),
])
def test_cache_activations_rejects_arguments_that_would_hang_or_write_nothing(tmp_path, kwargs, message):
    with time_limit(5), pytest.raises(ValueError, match=message):
        cache_activations(FAKE_MODEL, "webtext", tmp_path / "c", "blocks.13.hook_resid_pre", **kwargs)
    assert not (tmp_path / "c" / "manifest.json").exists()


# ---- SAEs ----------------------------------------------------------------------------------------------------
def test_a_mistyped_sae_path_says_no_such_folder(tmp_path):
    from helpers.saes import load_sae

    with pytest.raises(FileNotFoundError, match="No such SAE folder: .*typo.*notebook 02"):
        load_sae(tmp_path / "runs" / "x" / "saes" / "typo")
    with pytest.raises(FileNotFoundError, match="No such SAE folder"):
        load_sae("runs/x/saes/typo")


# ---- models --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"name": "/path/typo"}, "No such file or folder: /path/typo"),
    ({"name": "./models/typo"}, "No such file or folder"),
    ({"name": "Qwen/Qwen1.5-0.5B-Chat"}, "offline .* not in the local Hugging Face cache"),
    ({"name": "gpt-17"}, "Unknown model 'gpt-17'"),
    ({"dtype": "float99"}, "dtype='float99' is not supported"),
    ({"device": "cuda"}, "no CUDA GPU: use device='cpu'"),
])
def test_load_model_fails_fast_with_advice(kwargs, message, monkeypatch):
    from helpers.models import load_model

    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises((ValueError, RuntimeError), match=message):  # ConfigError / ModelLoadError
        load_model(**kwargs)
    assert time.perf_counter() - start < 5.0


def test_a_model_folder_without_tokenizer_files_is_refused(tmp_path):
    from helpers.models import ModelLoadError, check_model_folder

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="holds no weights"):
        check_model_folder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="holds no tokenizer files .*delete"):
        check_model_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    check_model_folder(tmp_path)


def test_a_damaged_cached_gguf_is_detected_and_rebuilt(tmp_path):
    from helpers.models import OFFLINE_GGUF_SHA256, assemble_offline_gguf, sha256_file

    path = assemble_offline_gguf(tmp_path)
    with open(path, "r+b") as f:  # flip one byte, keep the size
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    rebuilt = assemble_offline_gguf(tmp_path)
    assert sha256_file(rebuilt) == OFFLINE_GGUF_SHA256
    start = time.perf_counter()
    assert assemble_offline_gguf(tmp_path) == rebuilt
    assert time.perf_counter() - start < 0.5, "verified once: later calls trust the size+mtime stamp"
    shutil.rmtree(tmp_path, ignore_errors=True)


# ---- generation (needs the model) ----------------------------------------------------------------------------
@pytest.mark.slow
def test_generation_takes_lists_of_strings_and_checks_the_intervention(model):
    from helpers.generation import generate

    with pytest.raises(TypeError, match="one string .*wrap it"):
        generate(model, "How do I bake bread?")
    with pytest.raises(TypeError, match=r"instructions\[1\] is a int"):
        generate(model, ["ok", 3])
    with pytest.raises(ValueError, match=r"shape \(1,\), but this model needs \[896\]"):
        generate(model, ["Hi"], Intervention(add=torch.ones(1), add_layer=3), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        generate(model, ["Hi"], max_new_tokens=0)


def test_mixed_cache_takes_equal_shares(tmp_path):
    from helpers.activations import MixedCache

    a, b = ActivationCache(write_cache(tmp_path / "a")), ActivationCache(write_cache(tmp_path / "b"))
    for i in range(2):  # mark each cache's activations: a = +100, b = -100
        for cache, sign in ((a, 1), (b, -1)):
            path = cache.folder / cache.manifest.shards[i]["file"]
            n = cache.manifest.shards[i]["tokens"]
            save_file({"activations": torch.full((n, 8), 100.0 * sign).half(), "token_ids": torch.zeros(n, dtype=torch.int32),
                       "positions": torch.arange(n, dtype=torch.int32)}, str(path))
    mixed = MixedCache([a, b])
    assert mixed.n_tokens == 160 and mixed.manifest.d_model == 8
    batch = next(mixed.data_provider(16))
    assert batch.shape == (16, 8) and (batch[:, 0] > 0).sum() == 8
    with pytest.raises(ValueError, match="divisible"):
        mixed.data_provider(15)
