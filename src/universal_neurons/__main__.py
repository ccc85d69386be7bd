"""``python -m universal_neurons``: the ``universal-neurons`` command."""

from universal_neurons.pipeline.cli import main

main()
