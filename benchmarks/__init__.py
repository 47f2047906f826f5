"""Benchmarks of the run path against baselines measured in the same run.

``python -m benchmarks`` runs them all and prints one table; ``--quick`` runs each with a small N
(a check that they work), ``--only NAME`` runs one. See benchmarks/README.md for what each one
measures, its baseline, its target and the latest numbers.
"""
