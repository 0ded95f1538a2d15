"""The search strategy: the bi-level step, objectives, MGDA, the derivation and its guards, the run."""
