"""Analysis: streaming statistics of neuron activations, universality, neuron statistics, families."""
