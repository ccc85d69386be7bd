"""Stage syntax: spaCy part of speech / dependency label of every analysis position.

Model-independent, so it is computed once and cached (``data/syntax``: ``pos.npy``, ``dep.npy``,
``labels.json``; see ``analysis.syntax``) for every classify run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from universal_neurons.description.features import token_pieces
from universal_neurons.description.syntax import load_spacy, parse_syntax, spacy_name
from universal_neurons.io import atomic_path
from universal_neurons.matching.activations import analysis_tokens
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.text.tokens import load_tokenizer, load_tokens

if TYPE_CHECKING:
    from universal_neurons.config import Params


def run(params: Params, layout: Layout) -> dict:
    """Parse the analysis token set; write ``pos.npy``, ``dep.npy``, ``labels.json``."""
    tokenizer = load_tokenizer(layout.tokens)
    tokens = np.asarray(
        analysis_tokens(load_tokens(layout.tokens, params.analysis.split), params.analysis)
    )
    nlp = load_spacy(params.families.spacy_model)
    name = spacy_name(nlp)
    syntax = parse_syntax(
        tokens, token_pieces(tokenizer), nlp, params.families.spacy_batch_size, model_name=name
    )
    with atomic_path(layout.stage_dir("syntax")) as temp:
        temp.mkdir()
        syntax.save(temp)
    return {
        "sequences": int(tokens.shape[0]),
        "model": name,
        "pos_labels": list(syntax.pos_labels),
        "dep_labels": len(syntax.dep_labels),
    }


COMMAND = Stage(
    name="syntax",
    params=("analysis.split", "analysis.max_sequences", "families.spacy_model"),
    inputs=lambda layout: [layout.tokens],
    outputs=lambda layout: [Out(layout.stage_dir("syntax"))],
    run=run,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
