"""Data sets: sources, the resumable store, the distributed runner and the HTML report."""
