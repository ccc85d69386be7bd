"""Which neurons recur across seeds: the analysis token set, streaming moments, the correlation pass and its work units, the rotation baseline, universality and its emergence over training."""
