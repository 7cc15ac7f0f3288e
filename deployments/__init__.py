"""Prefect deployments, automations, schedules and the Prefect server for the embedded default."""
