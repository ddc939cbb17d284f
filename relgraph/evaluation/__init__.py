"""Evaluation: the metrics for relevance maps and the evaluation suite."""
