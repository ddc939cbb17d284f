"""Architectures shipped with relgraph, as YAML files loadable by name (``"c3d"``)."""
