"""Reusable Prefect tasks, one module per stage of the lifecycle."""
