"""E2RNAS: effective, efficient and robust neural architecture search, built for deployment."""

__version__ = "0.1.0"
