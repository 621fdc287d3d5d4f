import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers.activations import ActivationCache, CacheError, cache_activations, hook_layer, read_manifest
from helpers.corpora import iter_texts, token_windows
from tolerances import assert_within, scaled_error

ARGS = dict(corpus="chat", hook_name="blocks.13.hook_resid_pre", n_tokens=1200, context_size=32, batch_windows=2,
            shard_tokens=200)


def shard_contents(folder):
    manifest = read_manifest(folder)
    return manifest, [load_file(str(folder / s["file"])) for s in manifest.shards]


def assert_same_cache(a, b):
    ma, sa = shard_contents(a)
    mb, sb = shard_contents(b)
    assert ma.complete and mb.complete
    assert (ma.tokens, ma.windows_done, ma.shards) == (mb.tokens, mb.windows_done, mb.shards)
    assert (ma.dropped_first, ma.dropped_outliers) == (mb.dropped_first, mb.dropped_outliers)
    for x, y in zip(sa, sb):
        assert torch.equal(x["token_ids"], y["token_ids"]) and torch.equal(x["positions"], y["positions"])
        # float16 shards (relative spacing 4.9e-4), |Δ| / max(|value|, 1)
        # measured: max 0.0e+00 over 5 settings (bound 0.01, no rounding seen; scripts/tolerance_margins.py)
        assert_within("activations.resumed vs uninterrupted cache", scaled_error(x["activations"], y["activations"]),
                      1e-2)


def test_hook_layer_checks():
    assert hook_layer("blocks.13.hook_resid_pre", 24) == 13
    with pytest.raises(ValueError, match="out of range"):
        hook_layer("blocks.30.hook_resid_pre", 24, "Qwen")
    with pytest.raises(ValueError, match="Only residual-stream hooks"):
        hook_layer("blocks.3.attn.hook_z", 24)


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref")
    cache_activations(model, folder=folder, **ARGS)
    return folder


@pytest.mark.slow
def test_cache_content_and_manifest(model, reference):
    manifest, shards = shard_contents(reference)
    assert manifest.tokens >= ARGS["n_tokens"] and len(shards) > 3
    assert manifest.model == model.name and manifest.hook_name == ARGS["hook_name"]
    assert all(name in manifest.versions for name in ("torch", "sae_lens", "transformer_lens"))
    first = shards[0]
    assert first["activations"].dtype == torch.float16 and first["activations"].shape[1] == 896
    assert (first["positions"] > 0).all(), "the first token of every window is dropped"
    assert manifest.dropped_first == manifest.windows_done
    # The cached activations are the model's blocks.13.hook_resid_pre at the kept tokens of the first window.
    window = next(token_windows(iter_texts("chat", model.format_messages), model.tokenizer, ARGS["context_size"]))
    with torch.no_grad():
        resid = model.tl(torch.tensor([window]), stop_at_layer=13)[0]
    n = int((first["positions"][1:] > first["positions"][:-1]).long().cumprod(0).sum()) + 1  # first window's rows
    pos = first["positions"][:n].long()
    assert torch.equal(first["token_ids"][:n].long(), torch.tensor(window)[pos])
    # float16 storage of values up to ~400 (spacing 0.25 there), |Δ| / max(|value|, 1); a wrong layer or
    # position differs by O(1) relative
    # measured: max 4.8e-04 over 5 settings (bound 0.01, 21x; scripts/tolerance_margins.py)
    assert_within("activations.cached vs model residual", scaled_error(first["activations"][:n], resid[pos]), 1e-2)
    norms = resid.norm(dim=-1)
    dropped = sorted(set(range(1, ARGS["context_size"])) - set(pos.tolist()))
    assert all(norms[d] > 5 * norms[1:].median() for d in dropped), "only norm outliers are dropped"


@pytest.mark.slow
def test_interrupted_run_resumes_to_identical_content(model, reference, tmp_path):
    partial = cache_activations(model, folder=tmp_path, max_batches=7, **ARGS)
    on_disk = read_manifest(tmp_path)
    assert not on_disk.complete and 0 < len(on_disk.shards) < len(read_manifest(reference).shards)
    (tmp_path / "shard_99999.safetensors.tmp").write_bytes(b"half-written")  # as a crash mid-write leaves
    with pytest.raises(CacheError, match="incomplete"):
        ActivationCache(tmp_path)
    cache_activations(model, folder=tmp_path, **ARGS)
    assert not (tmp_path / "shard_99999.safetensors.tmp").exists()
    assert_same_cache(reference, tmp_path)
    assert partial.windows_done <= read_manifest(tmp_path).windows_done


@pytest.mark.slow
def test_killed_process_resumes_to_identical_content(model, reference, tmp_path):
    """SIGKILL a caching process as soon as it has written a shard, then finish the run here."""
    script = (
        "import os; os.environ['HF_HUB_OFFLINE']='1'\n"
        "from pathlib import Path\n"
        "from helpers.models import load_model\n"
        "from helpers.activations import cache_activations\n"
        f"args = {ARGS!r}\n"
        f"cache_activations(load_model(), folder=Path({str(tmp_path)!r}), **args)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    manifest = tmp_path / "manifest.json"
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 2:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    killed = read_manifest(tmp_path)
    assert not killed.complete, "the process finished before it could be killed; enlarge n_tokens"
    cache_activations(model, folder=tmp_path, **ARGS)
    assert_same_cache(reference, tmp_path)


@pytest.mark.slow
def test_cache_for_other_model_or_hook_is_refused(model, reference, tmp_path):
    cache = ActivationCache(reference, model_name=model.name, hook_name=ARGS["hook_name"])
    assert cache.n_tokens >= ARGS["n_tokens"]
    with pytest.raises(CacheError, match="made with model 'SmolLM2'"):
        manifest = json.loads((reference / "manifest.json").read_text())
        manifest["model"] = "SmolLM2"
        other = tmp_path / "other"
        other.mkdir()
        (other / "manifest.json").write_text(json.dumps(manifest))
        ActivationCache(other, model_name=model.name)
    with pytest.raises(CacheError, match="holds 'blocks.13.hook_resid_pre', not 'blocks.6.hook_resid_pre'"):
        ActivationCache(reference, hook_name="blocks.6.hook_resid_pre")
    with pytest.raises(CacheError, match="other settings"):
        cache_activations(model, folder=reference, **{**ARGS, "context_size": 64})
    with pytest.raises(CacheError, match="Run notebook 01"):
        ActivationCache(tmp_path / "nothing")


@pytest.mark.slow
def test_data_provider_yields_shuffled_batches(reference):
    cache = ActivationCache(reference)
    batches = [next(iter_) for iter_ in [cache.data_provider(128, seed=0)] for _ in range(3)]
    assert all(b.shape == (128, 896) and b.dtype == torch.float32 for b in batches)
    again = cache.data_provider(128, seed=0)
    assert torch.equal(next(again), batches[0])
    assert not torch.equal(next(cache.data_provider(128, seed=1)), batches[0])


@pytest.fixture(scope="module")
def tiny():
    from helpers.config import get_config
    from helpers.models import load_from_config

    return load_from_config(get_config("smoke"))


TINY = dict(hook_name="blocks.13.hook_resid_pre", n_tokens=300, context_size=32, batch_windows=2, shard_tokens=100)


def test_a_cache_made_with_other_versions_is_cached_again(tiny, tmp_path, monkeypatch, capsys):
    """A library upgrade (or, for the offline webtext, a new Python: its documents include the interpreter's
    standard-library source) makes a cache stale: notebook 01 caches it again instead of reusing it."""
    from helpers import activations

    for corpus, keys in (("webtext", ("tokenizers", "python", "transformers")), ("chat", ("tokenizers", "torch"))):
        folder = tmp_path / corpus
        first = cache_activations(tiny, corpus, folder, **TINY)
        assert set(activations.STALE_KEYS) - {"python"} <= set(first.versions)
        assert ("python" in first.versions) == (corpus == "webtext")
        again = cache_activations(tiny, corpus, folder, **TINY)  # nothing changed: reused, the same cache
        assert again.cache_id == first.cache_id and again.seconds == first.seconds
        for key in keys:
            real = activations._versions
            monkeypatch.setattr(activations, "_versions", lambda *a, **k: {**real(*a, **k), key: "0.0-other"})
            capsys.readouterr()
            redone = cache_activations(tiny, corpus, folder, **TINY)
            assert f"'{key}': (" in capsys.readouterr().out  # one line names what changed
            assert redone.complete and redone.versions[key] == "0.0-other" and redone.cache_id != first.cache_id
            assert sorted(p.name for p in folder.glob("shard_*")) == sorted(s["file"] for s in redone.shards)
            monkeypatch.setattr(activations, "_versions", real)
            first = cache_activations(tiny, corpus, folder, **TINY)  # and back: cached again
    # a library that does not change activations (sae_lens) leaves the cache alone
    kept = read_manifest(tmp_path / "chat")
    real = activations._versions
    monkeypatch.setattr(activations, "_versions", lambda *a, **k: {**real(*a, **k), "sae_lens": "0.0-other"})
    assert cache_activations(tiny, "chat", tmp_path / "chat", **TINY).cache_id == kept.cache_id
    monkeypatch.setattr(activations, "_versions", real)
    # a manifest from before versions were recorded this fully is stale too
    m = json.loads((tmp_path / "chat" / "manifest.json").read_text())
    del m["versions"]["tokenizers"]
    (tmp_path / "chat" / "manifest.json").write_text(json.dumps(m))
    assert cache_activations(tiny, "chat", tmp_path / "chat", **TINY).cache_id != kept.cache_id


def test_sae_reuse_key_follows_the_cache_not_the_clone_path(tiny, tmp_path, monkeypatch):
    """An SAE is reused for the same cache wherever the clone lies (a moved clone reruns nothing), and retrained when
    the cache was made again or the training libraries changed."""
    import shutil

    import sae_lens

    from helpers import saes
    from helpers.config import SAEConfig

    cache_activations(tiny, "chat", tmp_path / "a" / "runs" / "chat" / "train-x", **TINY)
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    sae_cfg = SAEConfig(d_sae=32, training_tokens=256, train_batch_size_tokens=64, context_size=32)
    key = saes.training_key(sae_cfg, ActivationCache(tmp_path / "a" / "runs" / "chat" / "train-x"), 40, 0.1, 1, 0)
    moved = ActivationCache(tmp_path / "moved" / "runs" / "chat" / "train-x")
    assert saes.training_key(sae_cfg, moved, 40, 0.1, 1, 0) == key
    assert key["caches"] == ["chat/train-x"] and key["versions"]["sae_lens"] == sae_lens.__version__
    monkeypatch.setattr(sae_lens, "__version__", "0.0-other")
    assert saes.training_key(sae_cfg, moved, 40, 0.1, 1, 0) != key
    monkeypatch.undo()
    m = json.loads((tmp_path / "moved" / "runs" / "chat" / "train-x" / "manifest.json").read_text())
    m["versions"]["torch"] = "0.0-other"
    (tmp_path / "moved" / "runs" / "chat" / "train-x" / "manifest.json").write_text(json.dumps(m))
    cache_activations(tiny, "chat", tmp_path / "moved" / "runs" / "chat" / "train-x", **TINY)  # made again
    assert saes.training_key(sae_cfg, ActivationCache(tmp_path / "moved" / "runs" / "chat" / "train-x"),
                             40, 0.1, 1, 0) != key
