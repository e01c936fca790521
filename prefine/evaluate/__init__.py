"""Evaluation: test metrics, cheap probes of an embedding, the label-budget study report."""
