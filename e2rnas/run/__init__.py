"""Orchestration: the pipeline and its stages, sweeps, tracking and the report."""
