"""The benchmark suite: ProcessFlow beside its baselines, measured in one run.

``python -m bench`` (``make bench``) runs everything at full size;
``python -m bench --quick`` (``make bench-quick``) runs a smaller version in
about two minutes. Both write docs/BENCHMARKS.md and print one JSON object on
the last line of standard output.
"""
