"""Stage wiring: each module reads its parameters, calls the library, writes its outputs atomically.

The logic lives in ``universal_neurons``; these functions only connect ``params.yaml``
and the pipeline's paths to it. ``dvc.yaml`` runs them through the
``universal-neurons`` command.
"""
