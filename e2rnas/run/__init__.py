"""Orchestration: the pipeline and its stages, sweeps, tracking, provenance and the report."""
