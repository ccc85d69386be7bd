"""Outputs: what a researcher reads: figures, the HTML report, the MLflow run, neuron views."""
