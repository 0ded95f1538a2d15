"""Evaluation: accuracy, attacks (FGSM, PGD) and OoD detection metrics."""
