"""The engine: the architecture spec, ops, the layer graph, weights, canonization and the passes."""
