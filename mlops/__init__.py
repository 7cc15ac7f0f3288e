"""Shared infrastructure of the lifecycle: settings, managed server processes, the CLI."""
