"""syntax: spaCy part of speech and dependency label of every position of the analysis token set.

Model-independent, so it is computed once and cached (``data/syntax``) for every
classify run.
"""

from pathlib import Path

import numpy as np

from stages.paths import TOKENS_DIR
from universal_neurons.activations import analysis_tokens
from universal_neurons.config import Params
from universal_neurons.features import load_spacy, parse_syntax, token_pieces
from universal_neurons.io import atomic_path
from universal_neurons.tokens import load_tokenizer, load_tokens

SYNTAX_DIR = Path("data/syntax")


def run(params: Params, tokens_dir: Path = TOKENS_DIR, output_dir: Path = SYNTAX_DIR) -> dict:
    """Parse the analysis token set; write ``pos.npy``, ``dep.npy``, ``labels.json``."""
    tokenizer = load_tokenizer(tokens_dir)
    tokens = np.asarray(
        analysis_tokens(load_tokens(tokens_dir, params.analysis.split), params.analysis)
    )
    nlp = load_spacy(params.families.spacy_model)
    meta = nlp.meta
    name = (
        f"{meta['lang']}_{meta['name']}=={meta['version']} (spaCy {meta.get('spacy_version', '')})"
    )
    syntax = parse_syntax(
        tokens, token_pieces(tokenizer), nlp, params.families.spacy_batch_size, model_name=name
    )
    with atomic_path(output_dir) as temp:
        temp.mkdir()
        syntax.save(temp)
    return {
        "sequences": int(tokens.shape[0]),
        "model": name,
        "pos_labels": list(syntax.pos_labels),
        "dep_labels": len(syntax.dep_labels),
    }
