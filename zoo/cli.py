"""The ``python -m zoo`` command line, and the argument parser every command of the project uses.

``python -m zoo`` prints the registered optimizers as a Markdown table;
``python -m zoo --readme README.md`` rewrites the table between the README's markers.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from . import registry

__all__ = ["ArgumentParser", "main"]

README_BLOCK = re.compile(r"(<!-- optimizers:start -->\n).*?(\n<!-- optimizers:end -->)", re.S)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr and exit status 2:
    ``PROG: error: MESSAGE (PROG --help lists the options)``, never a traceback. Sub-commands
    made with ``add_subparsers`` get the same class."""

    def error(self, message: str):
        text = " ".join(str(message).split())   # one line, whatever the message held
        self.exit(2, f"{self.prog}: error: {text} ({self.prog} --help lists the options)\n")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m zoo", description=__doc__.split("\n\n")[1])
    parser.add_argument("--readme", type=Path, help="rewrite the optimizer list in this Markdown file")
    args = parser.parse_args(argv)
    table = registry.markdown_table()
    if args.readme is None:
        print(table)
        return
    try:
        text = args.readme.read_text()
        if not README_BLOCK.search(text):
            parser.error(f"--readme {args.readme} has no '<!-- optimizers:start -->' ... "
                         "'<!-- optimizers:end -->' block; add the two markers where the table belongs")
        args.readme.write_text(README_BLOCK.sub(lambda m: m.group(1) + table + m.group(2), text))
    except OSError as error:
        parser.error(f"--readme {args.readme}: {error.strerror or error}")
