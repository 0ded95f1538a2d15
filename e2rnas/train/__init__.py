"""Retraining a genotype (DARTS protocol), mixed precision."""
