"""The tokenize stage: real text, deterministic bytes, sequences labelled with their domain."""

import hashlib
import json
import os

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, tiny_params

from stages import tokenize
from universal_neurons.config import CorpusConfig, TokenizerConfig
from universal_neurons.pipeline.layout import Layout
from universal_neurons.text.corpus import CorpusError, load_corpus
from universal_neurons.text.tokens import build_tokenizer, gpt2_tokenizer, load_domains, load_tokens


def _file_bytes(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def dvc_dir_md5(directory) -> str:
    """DVC's hash of a directory output: md5 of the sorted JSON manifest of file md5s."""
    entries = [
        {"md5": hashlib.md5((directory / name).read_bytes()).hexdigest(), "relpath": name}
        for name in sorted(os.listdir(directory))
    ]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def test_tokenize_is_byte_identical_when_rerun(tiny_tokens_dir, tmp_path):
    again = tmp_path / "tokens"
    tokenize.run(tiny_params(), Layout.at(tmp_path, tokens=again))
    assert _file_bytes(again) == _file_bytes(tiny_tokens_dir)


def test_token_array_layout(tiny_tokens_dir):
    params = tiny_params()
    train, heldout = load_tokens(tiny_tokens_dir, "train"), load_tokens(tiny_tokens_dir, "heldout")
    assert train.dtype == np.uint16 and train.shape[1] == params.tokens.context
    assert heldout.shape[1] == params.tokens.context
    assert (train[:, 0] == 0).all() and (heldout[:, 0] == 0).all()  # BOS = <|endoftext|> = id 0
    n = len(train) + len(heldout)
    assert len(heldout) == round(params.tokens.heldout_fraction * n)
    labels, names = load_domains(tiny_tokens_dir, "train")
    assert names == ["news", "python_docs"]
    assert labels.shape == (len(train),) and set(np.unique(labels)) == {0, 1}
    summary = json.loads((tiny_tokens_dir / "summary.json").read_text())
    assert summary["train_sequences"] == len(train)
    assert int(train.max()) < summary["vocab_size"] == params.tokenizer.vocab_size


def test_each_sequence_comes_from_its_domain(tiny_tokens_dir):
    from universal_neurons.text.tokens import load_tokenizer

    tokenizer = load_tokenizer(tiny_tokens_dir)
    train = load_tokens(tiny_tokens_dir, "train")
    labels, names = load_domains(tiny_tokens_dir, "train")
    docs = load_corpus(CorpusConfig(sources=["news", "python_docs"]))
    text_of = {
        d: " ".join(" ".join(doc.text for doc in docs if doc.domain == d).split()) for d in names
    }
    for row in range(0, len(train), max(1, len(train) // 20)):
        words = tokenizer.decode(list(train[row, 1:])).split("<|endoftext|>")[0].split()
        probe = " ".join(words[1:6])  # skip a possibly cut first word
        if len(probe) > 15:
            assert probe in text_of[names[labels[row]]]


def test_gpt2_tokenizer_matches_gpt2_ids():
    tokenizer = gpt2_tokenizer()
    assert tokenizer.get_vocab_size() == 50257
    assert tokenizer.encode("Hello world").ids == [15496, 995]
    assert tokenizer.token_to_id("<|endoftext|>") == 50256


def test_gpt2_end_of_text_is_special(tmp_path):
    """As in GPT-2's own tokenizer: saved among the added special tokens, decoded to "" (so the
    syntax stage's text of a sequence does not start with "<|endoftext|>" glued to its first
    word), and the ids of text around it unchanged."""
    from universal_neurons.description.features import token_pieces

    tokenizer = gpt2_tokenizer()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    added = json.loads((tmp_path / "tokenizer.json").read_text())["added_tokens"]
    assert [(t["id"], t["content"], t["special"]) for t in added] == [
        (50256, "<|endoftext|>", True)
    ]
    assert tokenizer.decode([50256, 15496, 995]) == "Hello world"
    assert token_pieces(tokenizer)[50256] == ""
    assert tokenizer.encode("Hello<|endoftext|> world").ids == [15496, 50256, 995]


def test_bpe_vocab_size_is_a_parameter():
    docs = load_corpus(CorpusConfig(sources=["python_docs"]))
    assert build_tokenizer(TokenizerConfig(vocab_size=300), docs).get_vocab_size() == 300


def test_local_txt_and_jsonl_sources(tmp_path):
    txt = tmp_path / "essays.txt"
    txt.write_text("First essay " * 30 + "\n\n" + "Second essay " * 30 + "\n\n\n" + "short\n")
    jsonl = tmp_path / "forum.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"text": f"Post number {i} " * 20}) for i in range(3)) + "\n"
    )
    docs = load_corpus(CorpusConfig(sources=[str(txt), str(jsonl)], min_doc_chars=100))
    assert [d.domain for d in docs] == ["essays", "essays", "forum", "forum", "forum"]
    assert docs[1].text.startswith("Second essay")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"\x00\x01\x02binary", "binary"),
        (b"\xff\xfe\xfa", "not UTF-8"),
        (b"tiny\n", "holds no document"),
    ],
)
def test_bad_local_sources(tmp_path, content, message):
    path = tmp_path / "src.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        load_corpus(CorpusConfig(sources=[str(path)], min_doc_chars=50))


@pytest.mark.slow
def test_default_tokens_match_the_committed_dvc_lock(tmp_path):
    """The shipped models were trained on these exact bytes: any machine must rebuild them."""
    from universal_neurons.config import load_params

    lock = yaml.safe_load((REPO_ROOT / "dvc.lock").read_text())
    expected = lock["stages"]["tokenize"]["outs"][0]["md5"]
    out = tmp_path / "tokens"
    tokenize.run(load_params(REPO_ROOT / "params.yaml"), Layout.at(tmp_path, tokens=out))
    assert dvc_dir_md5(out) == expected
