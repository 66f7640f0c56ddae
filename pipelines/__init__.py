"""Prefect entry points (see gan_pipeline.py); the flows are ganops.flows."""
