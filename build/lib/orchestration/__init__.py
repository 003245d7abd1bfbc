"""Dagster front door to the DVC stage graph in dvc.yaml (assets, blocking GX checks, a DVC resource)."""
