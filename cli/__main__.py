"""``python -m e2rnas.cli``: the same as the ``e2rnas`` command (torchrun can launch it this way)."""

from e2rnas.cli.app import main

main()
