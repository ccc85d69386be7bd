"""The pipeline: where files live (``layout``), one declaration per stage (``stages/``), the
tools (``tools/``), the registry that finds them and the ``universal-neurons`` command line."""
