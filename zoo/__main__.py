"""``python -m zoo``: :func:`zoo.cli.main`."""
from .cli import main

main()
