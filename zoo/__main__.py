"""``python -m zoo``: print the registered optimizers as a Markdown table;
``python -m zoo --readme README.md`` rewrites the table between the README's markers."""
import argparse
import re
from pathlib import Path

from . import registry

parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
parser.add_argument("--readme", type=Path, help="rewrite the optimizer list in this Markdown file")
args = parser.parse_args()
table = registry.markdown_table()
if args.readme is None:
    print(table)
else:
    text = args.readme.read_text()
    marked = re.compile(r"(<!-- optimizers:start -->\n).*?(\n<!-- optimizers:end -->)", re.S)
    if not marked.search(text):
        raise SystemExit(f"{args.readme} has no <!-- optimizers:start --> ... <!-- optimizers:end --> block")
    args.readme.write_text(marked.sub(lambda m: m.group(1) + table + m.group(2), text))
