"""Prefect tasks: thin wrappers around the restate_recovery package's I/O functions."""
