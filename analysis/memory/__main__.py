"""``python -m analysis.memory``: :func:`analysis.memory.cli.main`."""
from .cli import main

main()
