"""What the universal neurons are: neuron statistics and the paper's findings, token features, spaCy labels, variance reduction, families, and the profile of one neuron (its pages)."""
