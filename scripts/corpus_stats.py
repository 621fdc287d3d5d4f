"""Count documents and tokens of the offline corpora, with load times.

Run: `python scripts/corpus_stats.py` (writes runs/corpus_stats.json as well).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from helpers.corpora import chatterbot_documents, iter_documents, recover_json_array, sharegpt_documents, sharegpt_file
from helpers.instructions import OWN_SETS, SPLITS, load_instructions
from helpers.models import OFFLINE_MODEL, LoadedModel, load_tokenizer


def main() -> None:
    tokenizer = load_tokenizer(OFFLINE_MODEL)
    # Only the chat template is needed to render chat documents; no weights.
    fmt = LoadedModel(name=OFFLINE_MODEL, tl=None, tokenizer=tokenizer).format_messages
    stats: dict = {"instructions": {}, "corpora": {}}
    for name in OWN_SETS:
        stats["instructions"][name] = {s: len(load_instructions(name, split=s)) for s in SPLITS}
    start = time.perf_counter()
    n_sharegpt = len(sharegpt_documents())
    raw = recover_json_array(sharegpt_file().read_text(encoding="utf-8"))
    stats["sharegpt_items_recovered"] = len(raw)
    stats["sharegpt_conversations_with_user_and_assistant"] = n_sharegpt
    stats["sharegpt_load_seconds"] = time.perf_counter() - start
    stats["chatterbot_dialogues"] = len(chatterbot_documents())
    for corpus in ("webtext", "chat"):
        for split in ("train", "heldout"):
            start = time.perf_counter()
            docs = list(iter_documents(corpus, split=split))
            load_s = time.perf_counter() - start
            texts = [d.text if d.messages is None else fmt(list(d.messages)) for d in docs]
            n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
            stats["corpora"][f"{corpus}/{split}"] = {"documents": len(docs), "tokens": n_tokens,
                                                     "chars": sum(map(len, texts)), "load_seconds": load_s}
            print(corpus, split, stats["corpora"][f"{corpus}/{split}"], flush=True)
    print(json.dumps(stats, indent=1))
    out = Path("runs") / "corpus_stats.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
