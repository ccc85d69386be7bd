"""tokenize: corpus sources -> tokenizer + token array with domain labels."""

from pathlib import Path

from stages.paths import TOKENS_DIR
from universal_neurons.config import Params
from universal_neurons.corpus import corpus_summary, load_corpus
from universal_neurons.io import atomic_path
from universal_neurons.tokens import build_token_set, build_tokenizer, save_token_set


def run(params: Params, output_dir: Path = TOKENS_DIR) -> dict:
    """Build the corpus, the tokenizer and the token array; return the summary."""
    documents = load_corpus(params.corpus)
    tokenizer = build_tokenizer(params.tokenizer, documents)
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
    with atomic_path(output_dir) as temp:
        temp.mkdir()
        save_token_set(temp, token_set, tokenizer, summary)
    return summary
