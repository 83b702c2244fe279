"""``python -m analysis.lowrank``: :func:`analysis.lowrank.cli.main`."""
from .cli import main

main()
