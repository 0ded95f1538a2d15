"""The ``e2rnas`` command line (installed as ``e2rnas.cli``): a thin Typer layer over the library."""
