"""Orchestration flows that run the DVC stages of dvc.yaml (no training logic lives here)."""
