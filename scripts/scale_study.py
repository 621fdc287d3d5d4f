"""The scale study (opt-in; not part of the main job): do Kissane et al.'s results move with SAE width and tokens?

Trains the preset's SAE pair (webtext_chat and chat offline) at matched L0 along two sweeps: every width of
`--widths` at the largest token count, every token count of `--tokens` at `--base-width` latents, two epochs over
each point's unique tokens (the offline preset's 4,096 latents on 400k tokens is one point). The training caches are
the preset's, continued to the largest token count (resumable, in pieces: `--cache-only`). Every point is evaluated
on Kissane et al.'s protocol (their AdvBench and Alpaca split, no system turn, position −1) and on held-out text; the
points of `--behaviour` also get the top latent's bypass when ablated and Lee et al.'s prompt specificity. One
results file per point under `runs/<preset>/scale_study/points/`, written last: rerun the same command after an
interruption and it goes on at the first point without one (a finished SAE is reused; a killed L0 search loads its
finished runs and retrains only the run it was in).
After each point, `table.md`, `table.csv`, `trends.json` and one figure per metric (`figures/*.html`) are written
from every finished point (`--report-only` writes them without training). `--record DIR` copies each results file,
the table, trends, figures and cost into a folder you commit (the project's: docs/measurements/scale_study); copy its
`points/` back into the run folder to redraw the report after the run folder is lost. Needs notebooks 01 and 02 of
the preset (and 03 for `--behaviour`).

Run: `python scripts/scale_study.py [--preset offline] [--widths 1024 ... 16384] [--tokens 200000 ... 1600000]`
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from helpers import scale
from helpers.config import get_config
from helpers.files import atomic_write_json, atomic_write_text

DEFAULT_WIDTHS = [1024, 2048, 4096, 8192, 16384]
DEFAULT_TOKENS = [200_000, 400_000, 800_000, 1_600_000]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--widths", type=int, nargs="+", default=DEFAULT_WIDTHS)
    ap.add_argument("--tokens", type=int, nargs="+", default=DEFAULT_TOKENS, help="unique tokens per corpus")
    ap.add_argument("--base-width", type=int, default=4096, help="the width of the token sweep")
    ap.add_argument("--only", nargs="+", default=None, help="train only these points, e.g. w4096_u400000")
    ap.add_argument("--behaviour", nargs="*", default=None,
                    help="points that also get the bypass and specificity (default: the preset's own size, the base "
                         "width at the largest token count and the widest point); none: no point")
    ap.add_argument("--prompts", choices=("kissane", "ours"), default="kissane",
                    help="kissane: their AdvBench/Alpaca split (needs the processed lists); ours: our matched sets "
                         "(for tests and a clone without them; labelled so)")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--max-rounds", type=int, default=None, help="L1 search rounds per SAE (default: the preset's)")
    ap.add_argument("--cache-only", action="store_true", help="only extend the caches (resumable), then stop")
    ap.add_argument("--report-only", action="store_true", help="only write the table, trends and figures")
    ap.add_argument("--record", type=Path, default=None,
                    help="also copy each finished point's results file, the table, trends and cost here (a folder "
                         "you commit, e.g. docs/measurements/scale_study: the run folder's SAEs and caches are not)")
    return ap.parse_args(argv)


def fail(message: str) -> None:
    print(f"scale_study: {message}", file=sys.stderr)
    raise SystemExit(2)


def protocol_prompts(kind: str, n: int, cfg) -> tuple[str, dict[str, list[str]]]:
    from helpers.instructions import instructions_only, load_instructions
    from helpers.public_splits import KISSANE_SET, kissane_prompts

    if kind == "ours":
        return (f"ours (matched train sets, n={n}), no system turn",
                {s: instructions_only(load_instructions(s, split="train", n=n)) for s in ("harmful", "harmless")})
    prompts = kissane_prompts(n=n, download=cfg.preset == "paper")
    if prompts is None:
        from helpers.instructions import processed_folder

        fail(f"Kissane et al.'s lists (advbench.json, alpaca.json) are not in {processed_folder()}: set "
             "$REFUSAL_PROCESSED_INSTRUCTIONS to andyrdt/refusal_direction's dataset/processed, or pass --prompts ours.")
    return f"{KISSANE_SET}, n={n}, no system turn", prompts


def copy_to_record(source: Path, record_dir: Path | None, name: str) -> None:
    """Copy one of the study's files (`name`, relative to its folder) into the record folder, if one is given."""
    if record_dir is not None:
        atomic_write_text(record_dir / name, (source / name).read_text())


def write_report(run_dir: Path, pair: tuple[str, str], label: str, base_width: int,
                 record_dir: Path | None = None) -> None:
    """Table, trends and figures from every finished point; the table, trends, figures (plotly.js from its CDN) and
    every point's results file also copied to `record_dir` (a point killed between its file and its copy gets it
    here)."""
    import pandas as pd

    from helpers.tables import markdown

    points = scale.completed(run_dir)
    out = scale.study_dir(run_dir)
    if not points:
        print("no finished point yet: nothing to report")
        return
    table = pd.DataFrame(scale.table_rows(points, pair)).astype(object)  # a k not reached stays None
    atomic_write_text(out / "table.csv", table.to_csv(index=False))
    shown = table.drop(columns=["L1 start", "training tokens"])
    title = f"Scale study, {label}; {len(points)} point{'s' * (len(points) != 1)}"
    text = atomic_write_text(out / "table.md", f"{title}\n\n" + markdown(shown))
    (out / "figures").mkdir(exist_ok=True)
    for metric, fig in scale.figures(points, pair).items():
        stem = re.sub(r"[^A-Za-z0-9.]+", "_", metric.split(" (")[0].replace("≤", "le")).strip("_")
        fig.write_html(out / "figures" / f"{stem}.html", div_id=stem,
                       include_plotlyjs="directory")  # plotly.min.js once, beside them: opens offline
        if record_dir is not None:  # the committed copy loads plotly.js from its CDN (3.5 MB not in the repository)
            atomic_write_text(record_dir / "figures" / f"{stem}.html", fig.to_html(include_plotlyjs="cdn", div_id=stem))
    trends = {}  # each metric's line against log tokens (at the base width) and log width (at the most tokens)
    largest = max(p.unique_tokens for p in points)
    along = {"training tokens": (sorted(p for p in points if p.d_sae == base_width), "training_tokens"),
             "width": (sorted(p for p in points if p.unique_tokens == largest), "d_sae")}
    for metric, (get, _) in scale.METRICS.items():
        for c in pair:
            for axis, (ps, attr) in along.items():
                xy = [(getattr(p, attr), get(points[p], c)) for p in ps]
                xy = [(x, y) for x, y in xy if y is not None]  # a smallest k not reached has no value
                trends[f"{metric} · {c} · along {axis}"] = scale.fit_trend([x for x, _ in xy], [y for _, y in xy],
                                                                         scale.PAPER_POINT[attr])
    atomic_write_json(out / "trends.json", trends)
    for name in ["table.md", "table.csv", "trends.json"] + [f"points/{p.name}.json" for p in sorted(points)]:
        copy_to_record(out, record_dir, name)
    print(text.read_text())
    print(f"table, trends and figures written to {out}")


def point_cost(result: dict) -> dict:
    """A point's seconds: training is every L0 run of both SAEs, whichever process ran it (a search killed and resumed
    across sessions keeps its finished runs' seconds); `training_wall_last_process` is the wall time of the process
    that finished the point, which undercounts a resumed point."""
    return {"training": sum(t["seconds"] for t in result["training"].values()),
            "evaluation": result["seconds"]["evaluation"],
            "training_wall_last_process": result["seconds"]["training"]}


def write_cost(run_dir: Path, record: Path | None, **measured: object) -> None:
    """`cost.json` (and its `--record` copy): the fields this run `measured` replace the file's, every other field is
    kept, and each finished point's seconds are recounted from its results file (`point_cost`)."""
    cost_file = scale.study_dir(run_dir) / "cost.json"
    cost = json.loads(cost_file.read_text()) if cost_file.exists() else {}
    cost.update(measured)
    cost["points"] = {p.name: point_cost(r) for p, r in scale.completed(run_dir).items()}
    atomic_write_json(cost_file, cost)
    copy_to_record(cost_file.parent, record, "cost.json")


def report(run_dir: Path, pair: tuple[str, str], label: str, args: argparse.Namespace, cache_seconds: dict,
           started: float) -> None:
    """`cost.json` and the report from every finished point, with their `--record` copies; called after each point
    (a study spans sessions and is killed somewhere: its table, trends and copies are never older than its last
    point)."""
    write_cost(run_dir, args.record, caching_seconds=cache_seconds, this_run_seconds=time.perf_counter() - started)
    write_report(run_dir, pair, label, args.base_width, args.record)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    cfg = get_config(args.preset)
    pair = cfg.sae_pair
    points = scale.study_points(args.widths, args.tokens, args.base_width)
    if args.only:
        wanted = {scale.Point.parse(n) for n in args.only}
        unknown = sorted(p.name for p in wanted - set(points))
        if unknown:
            fail(f"--only {unknown} are not points of this study; its points: {[p.name for p in points]}")
        points = [p for p in points if p in wanted]
    own_size = scale.Point(cfg.sae.d_sae, cfg.cache_tokens)
    behaviour = ({scale.Point.parse(n) for n in args.behaviour} if args.behaviour is not None else
                 {own_size, scale.Point(args.base_width, max(args.tokens)), scale.Point(max(args.widths), max(args.tokens))})
    if args.record is not None and args.record.exists() and not args.record.is_dir():
        fail(f"--record {args.record} is a file: pass a folder (it is made if missing).")
    label, prompts = protocol_prompts(args.prompts, args.n_prompts, cfg)
    if args.report_only:
        if (scale.study_dir(cfg.run_dir) / "cost.json").exists():  # caching as the last study run measured it
            write_cost(cfg.run_dir, args.record)
        write_report(cfg.run_dir, pair, label, args.base_width, args.record)
        return
    from helpers.decomposition import load_direction

    study = scale.study_dir(cfg.run_dir)
    needs_direction = bool(behaviour & set(points)) and not args.cache_only
    if needs_direction:
        direction, meta, mean_diffs = load_direction(cfg.run_dir)  # notebook 03 (a one-line error if missing)
    if cfg.sae.architecture != "standard":
        fail(f"the study trains Kissane et al.'s standard ReLU SAEs; the {cfg.preset} preset's are {cfg.sae.architecture}.")

    import torch
    from tqdm.auto import tqdm

    from helpers.activations import open_cache, split_heldout
    from helpers.corpora import heldout_windows
    from helpers.decomposition import prompt_activations
    from helpers.models import load_from_config
    from helpers.saes import load_sae, train_or_reuse

    model = load_from_config(cfg)
    started = time.perf_counter()
    caches = {c: scale.extend_cache(model, cfg, c, max(args.tokens)) for c in pair}
    cache_seconds = {c: caches[c].manifest.seconds for c in pair}
    print(f"caches: " + ", ".join(f"{c} {caches[c].n_tokens:,} tokens ({cache_seconds[c] / 60:.0f} min of caching)"
                                  for c in pair))
    if args.cache_only:
        return
    heldout = {c: split_heldout(open_cache(cfg, model.name, c, "heldout").load_all()) for c in pair}  # (tune, report)
    windows = {c: heldout_windows(c, model, cfg.sae_eval_windows, cfg.cache_context_size, seed=cfg.seed,
                                  source=cfg.webtext_source if c.startswith("webtext") else cfg.chat_source) for c in pair}
    plain = replace(model, system_prompt=None)  # Kissane et al.'s template: no system turn
    acts = {s: prompt_activations(plain, prompts[s], cfg.sae_hook, f"protocol: {s}").at(-1) for s in ("harmful", "harmless")}
    r_protocol = acts["harmful"].double().mean(0) - acts["harmless"].double().mean(0)
    ks = [2 ** i for i in range(10)]
    baseline = None
    if needs_direction:
        from helpers.evaluation import evaluate_refusal
        from helpers.hooks import Intervention
        from helpers.instructions import instructions_only, load_instructions

        harmful_test = instructions_only(load_instructions("harmful", split="test", n=cfg.n_test))
        max_new_tokens = min(32, cfg.max_new_tokens)  # as notebook 05
        base_file = study / "baseline.json"
        if base_file.exists():
            baseline = json.loads(base_file.read_text())
        else:
            runs = evaluate_refusal(model, harmful_test, {"none": Intervention(), "ablate r": Intervention(ablate=direction)},
                                    max_new_tokens, cfg.generation_batch_size)
            baseline = {k: {j: v[j] for j in ("substring", "starts_with", "degenerate")} for k, v in runs.items()}
            atomic_write_json(base_file, baseline)
        source = int(cfg.sae_hook.split(".")[1])
        target = meta["layer"]
        pos_index = list(range(-mean_diffs.shape[0], 0)).index(meta["position"])
    done = {p: {c: r["training"][c]["l1_coefficient"] for c in pair} for p, r in scale.completed(cfg.run_dir).items()}
    todo = [p for p in points if p not in done]
    print(f"{len(points) - len(todo)} of {len(points)} points done; next: {[p.name for p in todo]}")
    for p in tqdm(todo, desc="scale study", unit="point"):
        t0 = time.perf_counter()
        training, saes = {}, {}
        for c in pair:
            default = dict(cfg.l1_start).get(c, cfg.sae.l1_coefficient)
            start, how = scale.start_coefficient(done, p, c, default)
            sae_cfg = replace(cfg.sae, d_sae=p.d_sae, training_tokens=p.training_tokens, l1_coefficient=start)
            folder = study / "saes" / scale.sae_name(p, c)
            log, reused = train_or_reuse(c, caches[c].head(p.unique_tokens), heldout[c][0]["activations"], sae_cfg,
                                         folder, cfg.target_l0, tolerance=cfg.l0_tolerance,
                                         max_rounds=args.max_rounds or cfg.l0_max_rounds, seed=cfg.seed,
                                         device=cfg.device)
            record = json.loads((folder / "training.json").read_text())
            kept = next(row for row in log if row["kept"])
            training[c] = {"l1_coefficient": record["sae_config"]["l1_coefficient"], "start": start, "start_how": how,
                           "rounds": len(log), "runs": log, "l0_tune": kept["l0"], "reused": reused,
                           "seconds": sum(row["seconds"] for row in log)}
            saes[c] = load_sae(folder, model, cfg.sae_hook)
        l0 = [training[c]["l0_tune"] for c in pair]
        matched = max(l0) / min(l0) - 1 <= cfg.l0_tolerance
        t1 = time.perf_counter()
        result = scale.evaluate_point(model, saes, acts["harmful"], acts["harmless"], prompts["harmless"],
                                      {c: heldout[c][1]["activations"] for c in pair}, windows, pair, cfg.sae_hook,
                                      ks, args.resamples, cfg.seed, cfg.outlier_factor)
        if p in behaviour:
            from helpers import gradients
            from helpers.instructions import paraphrases

            spec, _ = gradients.specificity_grid(model, saes, paraphrases(), source, target,
                                                 mean_diffs[pos_index, target].float(), {"no system turn": None},
                                                 "mean", None, 10, args.resamples, cfg.seed, cfg.forward_batch_size)
            result["behaviour"] = scale.behaviour_point(model, saes, harmful_test, r_protocol.float(), baseline,
                                                        max_new_tokens, cfg.generation_batch_size, spec)
        result.update({"point": p.name, "d_sae": p.d_sae, "unique_tokens": p.unique_tokens,
                       "training_tokens": p.training_tokens, "prompts": label, "training": training,
                       "l0_matched": {"within_tolerance": matched, "tolerance": cfg.l0_tolerance, "l0_tune": l0},
                       "seconds": {"training": t1 - t0, "evaluation": time.perf_counter() - t1}})
        atomic_write_json(study / "points" / f"{p.name}.json", result)
        done[p] = {c: training[c]["l1_coefficient"] for c in pair}
        cos = {c: result["protocol"]["faithfulness"]["saes"][c]["cosine"]["estimate"] for c in pair}
        print(f"{p.name}: cosine {cos}; L0 {dict(zip(pair, [round(x, 1) for x in l0]))} (matched: {matched}); "
              f"{t1 - t0:.0f} s training, {time.perf_counter() - t1:.0f} s evaluation", flush=True)
        report(cfg.run_dir, pair, label, args, cache_seconds, started)  # also copies this point's file
    if not todo:
        report(cfg.run_dir, pair, label, args, cache_seconds, started)


if __name__ == "__main__":
    main()
