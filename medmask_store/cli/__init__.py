"""The ``medmask-store`` command line: a thin layer over the Python API."""
