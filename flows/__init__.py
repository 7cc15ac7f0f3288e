"""Prefect flows: each wires tasks together and runs with its defaults as ``python -m flows.<name>``."""
