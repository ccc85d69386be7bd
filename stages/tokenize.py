"""Stage tokenize: corpus -> tokenizer and token array.

Corpus sources -> tokenizer + token array with domain labels.

Writes ``data/tokens/`` (see ``text.tokens``): ``tokenizer.json``, ``{train,heldout}_tokens.npy``
uint16 ``[sequences, context]``, ``{train,heldout}_domains.npy`` and ``summary.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenizers import Tokenizer

from universal_neurons.io import atomic_path, check_not_output
from universal_neurons.models.loading import model_tokenizer
from universal_neurons.pipeline.command import Out, Stage, as_json
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.text.corpus import Document, corpus_summary, load_corpus
from universal_neurons.text.tokens import build_token_set, build_tokenizer, save_token_set

if TYPE_CHECKING:
    from universal_neurons.config import Params, TokenizerConfig


def tokenizer_for(config: TokenizerConfig, documents: list[Document]) -> Tokenizer:
    """The tokenizer ``tokenizer.kind`` asks for: a BPE trained on ``documents``, GPT-2's,
    or the one saved with a model."""
    if config.kind == "model":
        return model_tokenizer(config.path)
    return build_tokenizer(config, documents)


def _check_inputs_outside(params: Params, layout: Layout) -> None:
    """No corpus file and no tokenizer model lies inside ``data/tokens``, which is replaced."""
    for source in params.corpus.sources:
        check_not_output(source, layout.tokens, "corpus.sources")
    if params.tokenizer.kind == "model":
        check_not_output(params.tokenizer.path, layout.tokens, "tokenizer.path")


def run(params: Params, layout: Layout) -> dict:
    """Build the corpus, the tokenizer and the token array; return the summary."""
    _check_inputs_outside(params, layout)
    documents = load_corpus(params.corpus)
    tokenizer = tokenizer_for(params.tokenizer, documents)
    token_set = build_token_set(documents, tokenizer, params.tokens)
    summary = {
        "domains": token_set.domains,
        "corpus": corpus_summary(documents),
        "vocab_size": tokenizer.get_vocab_size(),
        "context": params.tokens.context,
        "train_sequences": int(len(token_set.train_tokens)),
        "heldout_sequences": int(len(token_set.heldout_tokens)),
        "train_tokens": int(token_set.train_tokens.size),
    }
    with atomic_path(layout.tokens) as temp:
        temp.mkdir()
        save_token_set(temp, token_set, tokenizer, summary)
    return summary


COMMAND = Stage(
    name="tokenize",
    params=("corpus", "tokenizer", "tokens"),
    outputs=lambda layout: [Out(layout.tokens, push=False)],
    run=run,
    render=lambda summary: as_json(summary["corpus"]),
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
