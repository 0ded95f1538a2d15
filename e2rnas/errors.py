"""The exception the CLI turns into a one-line error (exit code 2)."""


class E2RNASError(Exception):
    """A user-facing error: its message says what is wrong and how to fix it."""
