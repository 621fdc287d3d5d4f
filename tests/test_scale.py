"""The scale study (`helpers.scale`, `scripts/scale_study.py`): its points, the L1 search's starting coefficient, the
trend fit, the cache's head and continuation, and the study itself on tiny sizes: killed with SIGKILL inside a
point's training and rerun, it must end with the results of an uninterrupted run; every point's pair is trained by
notebook 02's L0 search."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import scale
from helpers.scale import Point

REPO = Path(__file__).resolve().parents[1]


def test_points_are_both_sweeps_cheapest_first():
    pts = scale.study_points([1024, 4096, 16384], [200_000, 1_600_000], base_width=4096)
    names = [p.name for p in pts]
    assert set(names) == {"w1024_u1600000", "w4096_u1600000", "w16384_u1600000", "w4096_u200000"}
    assert [p.cost for p in pts] == sorted(p.cost for p in pts)
    assert names[0] == "w4096_u200000"
    assert all(Point.parse(p.name) == p for p in pts)
    assert Point(4096, 400_000).training_tokens == 800_000  # two epochs, as the offline preset trains
    for bad in ("w4096", "4096_400000x", "wide_u1"):
        with pytest.raises(ValueError, match="not a scale-study point"):
            Point.parse(bad)
    for widths, tokens in (([], [1]), ([0], [1]), ([1024], [True]), ([1024.0], [1])):
        with pytest.raises(ValueError, match="positive integers"):
            scale.study_points(widths, tokens)


def test_start_coefficient():
    p = Point(4096, 400_000)
    assert scale.start_coefficient({}, p, "chat", 4.3) == (4.3, "the preset's starting coefficient (no point trained yet)")
    done = {Point(4096, 200_000): {"chat": 5.0, "webtext_chat": 6.0}, Point(1024, 1_600_000): {"chat": 2.0}}
    value, how = scale.start_coefficient(done, p, "chat", 4.3)
    assert (value, how) == (5.0, "the final coefficient of the nearest trained point, w4096_u200000")
    assert scale.start_coefficient(done, p, "webtext_chat", 1.0)[0] == 6.0
    # a power law along width through two trained points is followed exactly (also when extrapolating)
    law = {Point(w, 1_600_000): {"chat": 3.0 * (w / 1024) ** 0.5} for w in (1024, 2048)}
    value, how = scale.start_coefficient(law, Point(8192, 1_600_000), "chat", 1.0)
    assert value == pytest.approx(3.0 * 8 ** 0.5) and "fitted along d_sae through 2" in how
    # the point itself is never its own start (a rerun of a finished point starts where it first started)
    assert scale.start_coefficient({p: {"chat": 9.0}}, p, "chat", 4.3)[0] == 4.3


def test_fit_trend_predicts_a_line_and_widens_with_noise():
    xs = [1e5, 1e6, 1e7]
    exact = scale.fit_trend(xs, [0.1, 0.2, 0.3], 1e9)
    assert exact["prediction"] == pytest.approx(0.5) and exact["slope_per_decade"] == pytest.approx(0.1)
    assert exact["interval95"][1] - exact["interval95"][0] == pytest.approx(0, abs=1e-9)
    noisy = scale.fit_trend(xs + [1e8], [0.1, 0.25, 0.28, 0.41], 1e9)
    lo, hi = noisy["interval95"]
    assert lo < noisy["prediction"] < hi and hi - lo > 0.1
    assert scale.fit_trend(xs[:2], [0.1, 0.2], 1e9) is None


def _tiny_caches(runs: Path, corpora=("webtext", "chat")):
    from helpers.activations import cache_from_config
    from helpers.config import get_config
    from helpers.models import load_from_config

    os.environ["REFUSAL_RUNS_DIR"] = str(runs)
    try:
        cfg = get_config("smoke")
        model = load_from_config(cfg)
        for c in corpora:
            for split in ("train", "heldout"):
                cache_from_config(model, cfg, c, split)
    finally:
        del os.environ["REFUSAL_RUNS_DIR"]
    return cfg, model


def test_head_and_continue_cache(tmp_path, monkeypatch):
    from helpers.activations import ActivationCache, cache_dir
    from helpers.saes import training_key

    cfg, model = _tiny_caches(tmp_path, ("chat",))
    monkeypatch.setenv("REFUSAL_RUNS_DIR", str(tmp_path))
    small = ActivationCache(cache_dir(cfg, "chat", "train"))
    longer = scale.extend_cache(model, cfg, "chat", 3 * small.n_tokens)
    assert longer.folder != small.folder and longer.n_tokens >= 3 * small.n_tokens
    scratch = cfg.replace(cache_tokens=3 * small.n_tokens, seed=cfg.seed)
    from helpers.activations import cache_activations

    fresh = tmp_path / "scratch"
    cache_activations(model, "chat", fresh, cfg.sae_hook, scratch.cache_tokens, context_size=cfg.cache_context_size,
                      batch_windows=cfg.cache_batch_windows, shard_tokens=cfg.cache_shard_tokens, seed=cfg.seed)
    a, b = longer.load_all(), ActivationCache(fresh).load_all()
    assert a["token_ids"].equal(b["token_ids"]) and a["positions"].equal(b["positions"])  # the same tokens, in order
    assert (a["activations"] - b["activations"]).abs().max() == 0
    # a head is the first n tokens, everywhere the cache is read
    n = small.n_tokens + 100
    head = longer.head(n)
    assert head.n_tokens == n and head.load_all()["token_ids"].equal(a["token_ids"][:n])
    assert sum(len(head.shard(i)["token_ids"]) for i in range(len(head.manifest.shards))) == n
    batch = next(head.data_provider(64))
    assert batch.shape == (64, model.d_model)
    assert training_key(cfg.sae, head, 40, 0.1, 1, 0) != training_key(cfg.sae, longer, 40, 0.1, 1, 0)
    assert longer.n_tokens == a["token_ids"].shape[0]  # the view left the cache alone
    for bad in (0, longer.n_tokens + 1, 10.0, True):
        with pytest.raises(ValueError, match="n_tokens must be an integer"):
            longer.head(bad)


STUDY = ["--preset", "smoke", "--widths", "32", "--tokens", "2048", "4096", "--base-width", "32",
         "--behaviour", "w32_u4096", "--prompts", "ours", "--n-prompts", "4", "--resamples", "20"]


def _fake_direction(runs: Path) -> None:
    """Notebook 03's outputs for the tiny model (18 layers, width 64): a random direction at layer 16, position -1."""
    import torch

    folder = runs / "smoke" / "refusal_direction"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    mean_diffs = torch.randn(5, 18, 64, generator=g)
    torch.save(mean_diffs[-1, 16], folder / "direction.pt")
    torch.save(mean_diffs, folder / "mean_diffs.pt")
    (folder / "direction.json").write_text(json.dumps({"layer": 16, "position": -1}))


def _study(runs: Path, pause: str | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "REFUSAL_RUNS_DIR": str(runs), "HF_HUB_OFFLINE": "1", "MKL_CBWR": "AUTO",
           "WANDB_MODE": "disabled", "TRANSFORMERS_VERBOSITY": "error", "REFUSAL_PAUSE_MARKER": str(runs / "paused")}
    env.pop("REFUSAL_PAUSE_AT", None)
    if pause:
        env["REFUSAL_PAUSE_AT"] = pause
    return subprocess.Popen([sys.executable, "scripts/scale_study.py", *STUDY, *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _results(runs: Path) -> dict:
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if "seconds" not in k and k not in ("reused",)}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return round(x, 5) if isinstance(x, float) else x

    folder = runs / "smoke" / "scale_study" / "points"
    return {f.stem: strip(json.loads(f.read_text())) for f in sorted(folder.glob("*.json"))}


@pytest.mark.slow
def test_study_resumes_after_kill_and_matches_l0(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    _tiny_caches(clean)
    _fake_direction(clean)
    shutil.copytree(clean, killed)
    job = _study(clean, extra=("--record", str(tmp_path / "record")))
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-3000:]
    expected = _results(clean)
    assert set(expected) == {"w32_u2048", "w32_u4096"}
    assert out.index("; 1 point\n") < out.index("w32_u4096: cosine") < out.index("; 2 points\n")
    study = clean / "smoke" / "scale_study"
    for f in ("table.md", "table.csv", "trends.json", "cost.json"):
        assert (study / f).is_file(), f
    # --record: a copy of every results file, the table, trends and cost, byte for byte
    recorded = sorted(str(f.relative_to(tmp_path / "record")) for f in (tmp_path / "record").rglob("*") if f.is_file())
    figures = sorted(f"figures/{f.name}" for f in (study / "figures").glob("*.html"))
    assert recorded == sorted(["cost.json", "points/w32_u2048.json", "points/w32_u4096.json", "table.csv", "table.md",
                               "trends.json"] + figures)
    assert all((tmp_path / "record" / f).read_bytes() == (study / f).read_bytes() for f in recorded if f not in figures)
    for f in figures:  # the same figure, plotly.js from its CDN in the committed copy
        copy, own = (tmp_path / "record" / f).read_text(), (study / f).read_text()
        assert 'src="https://cdn.plot.ly/' in copy and 'src="plotly.min.js"' in own
        assert copy.split('Plotly.newPlot(')[1] == own.split('Plotly.newPlot(')[1]
    assert len(list((study / "figures").glob("*.html"))) == len(scale.METRICS)
    # a figure's title names Kissane et al.'s protocol exactly when its metric is measured on it
    titles = {label: fig.layout.title.text for label, fig in scale.figures(
        {scale.Point(int(n[1:].split("_u")[0]), int(n.split("_u")[1])): r for n, r in _results(clean).items()},
        ("webtext", "chat")).items()}
    assert set(scale.PROTOCOL_METRICS) < set(titles)
    assert {label for label, title in titles.items() if "Kissane et al.'s protocol" in title} == set(scale.PROTOCOL_METRICS)
    # the L0 search at every point: the kept run is the one closest to the target in log L0, a second round moves the
    # coefficient towards the target, and the next point starts where the search says
    from helpers.config import get_config

    cfg = get_config("smoke")
    for name, res in expected.items():
        for c in ("webtext", "chat"):
            runs_ = res["training"][c]["runs"]
            kept = [r for r in runs_ if r["kept"]]
            assert len(kept) == 1 and 1 <= len(runs_) <= cfg.l0_max_rounds
            dist = [abs(math.log(r["l0"] / cfg.target_l0)) for r in runs_]
            assert dist[runs_.index(kept[0])] == min(dist)
            if len(runs_) == 2:
                up = runs_[0]["l0"] > cfg.target_l0
                assert (runs_[1]["l1_coefficient"] > runs_[0]["l1_coefficient"]) == up
            assert res["training"][c]["l1_coefficient"] == kept[0]["l1_coefficient"]
    assert expected["w32_u4096"]["training"]["chat"]["start"] == expected["w32_u2048"]["training"]["chat"]["l1_coefficient"]
    # the behavioural claims at the point asked for only: the top latent by decoder cosine with the protocol's r
    # ablated beside "none" and "ablate r" (generated once, baseline.json), and the prompt specificity per SAE
    behaviour = expected["w32_u4096"]["behaviour"]
    assert "behaviour" not in expected["w32_u2048"] and (study / "baseline.json").is_file()
    assert set(behaviour["bypass"]) == {"none", "ablate r", "ablate webtext top latent", "ablate chat top latent"}
    assert all(v["substring"]["n"] == cfg.n_test == behaviour["n"] for v in behaviour["bypass"].values())
    assert {k.split(" · ")[0] for k in behaviour["specificity"]} == {"webtext", "chat"}
    top = expected["w32_u4096"]["protocol"]["max_decoder_cosine"]
    assert behaviour["top_latent"] == {c: top[c]["latent"] for c in ("webtext", "chat")}
    # killed in the second run of the first SAE whose L0 search took two (a run draws 20 batches for sae_lens' norm
    # estimate, then one per step), then rerun: finished points and SAEs are kept, the in-flight search's first run
    # is loaded, not trained again
    def batches(point: str) -> int:
        return 20 + expected[point]["training_tokens"] // cfg.sae.train_batch_size_tokens

    order = [(p, c) for p in ("w32_u2048", "w32_u4096") for c in ("webtext", "chat")]
    point, two = next((p, c) for p, c in order if expected[p]["training"][c]["rounds"] >= 2)
    before = sum(expected[p]["training"][c]["rounds"] * batches(p) for p, c in order[:order.index((point, two))])
    job = _study(killed, pause=f"sae_batch:{before + batches(point) + 10}",
                 extra=("--record", str(tmp_path / "record_killed")))
    marker = killed / "paused"
    deadline = time.time() + 600
    while not marker.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert marker.exists(), "the study never reached its pause point"
    job.send_signal(signal.SIGKILL)
    job.wait()
    finished = [p for p in ("w32_u2048", "w32_u4096") if p < point]
    partial = _results(killed)
    assert sorted(partial) == finished and all(partial[p] == expected[p] for p in finished)
    # the report is written after each point, not only at the end (a killed run keeps the table of its finished points)
    assert (tmp_path / "record_killed" / "table.md").is_file() == bool(finished)
    in_flight = killed / "smoke" / "scale_study" / "saes" / f"{point}_{two}" / "rounds"
    assert sorted(p.name for p in in_flight.iterdir()) == ["1"] and (in_flight / "1" / "round.json").is_file()
    job = _study(killed, extra=("--record", str(tmp_path / "record_killed")))
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-3000:]
    assert f"{two}: run 1 of the L0 search found in" in out and f"{two}: run 2 of the L0 search found" not in out
    assert _results(killed) == expected and not in_flight.exists()
    # cost.json counts every L0 run of a point, the killed process's included, not the wall time of the last process
    cost = json.loads((killed / "smoke" / "scale_study" / "cost.json").read_text())["points"]
    for name in expected:
        res = json.loads((killed / "smoke" / "scale_study" / "points" / f"{name}.json").read_text())
        runs_seconds = sum(r["seconds"] for c in ("webtext", "chat") for r in res["training"][c]["runs"])
        assert cost[name]["training"] == pytest.approx(runs_seconds) and runs_seconds > 0
        assert cost[name]["training_wall_last_process"] == res["seconds"]["training"]
    # a copy a killed run never made (killed between a results file and its copy) is made by the next report
    copies = tmp_path / "record_killed" / "points"
    (copies / "w32_u2048.json").unlink()
    job = _study(killed, extra=("--record", str(tmp_path / "record_killed"), "--report-only"))
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-3000:]
    points = killed / "smoke" / "scale_study" / "points"
    assert sorted(f.name for f in copies.iterdir()) == sorted(f.name for f in points.iterdir())
    assert all((copies / f.name).read_bytes() == f.read_bytes() for f in points.iterdir())
    assert not list(killed.rglob("*.tmp-*"))


def test_bad_input_fails_in_one_line(tmp_path):
    env = {**os.environ, "REFUSAL_RUNS_DIR": str(tmp_path), "REFUSAL_PROCESSED_INSTRUCTIONS": str(tmp_path / "none")}
    start = time.perf_counter()
    for args, says in ((["--preset", "smoke"], "are not in"),
                       (["--preset", "smoke", "--prompts", "ours", "--only", "w1_u1"], "are not points of this study"),
                       (["--preset", "smoke", "--prompts", "ours", "--record", "README.md"],
                        "is a file: pass a folder")):
        out = subprocess.run([sys.executable, "scripts/scale_study.py", *args], cwd=REPO, env=env, capture_output=True,
                             text=True)
        assert out.returncode == 2 and says in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert time.perf_counter() - start < 30
