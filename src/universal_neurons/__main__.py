"""``python -m universal_neurons``: the ``universal-neurons`` command."""

from universal_neurons.pipeline.cli import main

if __name__ == "__main__":
    main()
