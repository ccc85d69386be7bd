"""Universal neurons: MLP neurons that recur across language models differing only in their seed.

Layers, each importing only from the ones below it:

- ``pipeline``: the stages (``pipeline/stages/<name>.py``), the project's paths
  (``layout``), the registry and the ``universal-neurons`` command line;
- ``outputs``: figures, the HTML report, the MLflow run, the neuron views;
- ``analysis``: activations, moments, correlation, baseline, universality, statistics,
  features and families;
- ``models``: the GPT-2 architecture, training, loading through TransformerLens, groups;
- ``text``: the corpus and the token set;
- base modules: ``config`` (parameters), ``errors``, ``io`` (atomic outputs), ``hub``.
"""
