"""The pipeline's stages, one module each; a module's ``COMMAND`` is its ``Stage`` declaration.

``dvc.yaml`` runs each as ``universal-neurons <module name>``; tests/test_wiring.py checks
that ``dvc.yaml`` says what the declarations and the modules' imports say.
"""
