"""Sub-commands of the processflow command line (see processflow/cli.py)."""
