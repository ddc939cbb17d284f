"""Methods built on the engine: the discriminative method, its motion methods, baselines."""
