"""The ``compress`` command line: a thin Typer shell over the ``compressor`` library."""
