"""The notebooks under ``notebooks/``, executed.

    python -m analysis.notebooks                # re-execute every notebook in place, full setting
    python -m analysis.notebooks 04 05          # only these (a number or a file name)
    python -m analysis.notebooks --fast         # the short setting the tests run; nothing is written

The notebooks are committed executed at their full (documented) setting, with their figures, so
that a reader sees the results without running anything. Each notebook reads
``ZOO_NOTEBOOK_FAST`` (:data:`FAST_ENV`) in its first code cell and shortens its runs when it is
set; the test suite executes every notebook that way (:func:`execute` with ``fast=True``), so
none can go stale silently. An execution records in the notebook's metadata (``"zoo"``) the
setting it ran at and a SHA-256 of its code cells (:func:`code_digest`): a test checks that the
committed notebooks were executed at the full setting from the code they hold now.

The kernel runs in the notebook's folder, with the repository root on ``PYTHONPATH`` and
matplotlib's inline backend (:data:`INLINE_BACKEND`), so figures become outputs, with or without a
screen.
"""
from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .cli import ArgumentParser, usage_errors

__all__ = ["ROOT", "NOTEBOOK_DIR", "FAST_ENV", "find", "code_digest", "execute", "main"]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
FAST_ENV = "ZOO_NOTEBOOK_FAST"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
"""The kernel's matplotlib backend: figures are drawn (Agg) and stored in the cell's output."""


def find(names=(), folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The notebooks of ``folder`` (sorted), or those named: ``"04"`` (the number a file name
    starts with), ``"04_pretrain_llama"`` or ``"04_pretrain_llama.ipynb"``. An unknown name is a
    ``ValueError`` listing the notebooks there are."""
    every = sorted(Path(folder).glob("*.ipynb"))
    if not every:
        raise ValueError(f"no notebooks in {folder} (the command runs from a checkout of the repository)")
    chosen = []
    for name in names:
        match = [p for p in every if name in (p.name, p.stem, p.stem.split("_")[0])]
        if not match:
            raise ValueError(f"no notebook {name!r}; there are {', '.join(p.stem for p in every)}")
        chosen += [p for p in match if p not in chosen]
    return chosen or every


def code_digest(nb) -> str:
    """SHA-256 of the code cells' sources, in order: what an execution ran."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


@contextmanager
def _environment(fast: bool):
    """The kernel's environment (inherited from this process), restored afterwards."""
    saved = {k: os.environ.get(k) for k in (FAST_ENV, "MPLBACKEND", "PYTHONPATH")}
    os.environ["MPLBACKEND"] = INLINE_BACKEND   # whatever this process uses (CI sets Agg)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    if fast:
        os.environ[FAST_ENV] = "1"
    else:
        os.environ.pop(FAST_ENV, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute(path, *, fast: bool = False, timeout: float | None = None, write: bool = False):
    """Execute notebook ``path`` top to bottom in a fresh kernel and return it (``nbformat``),
    its metadata ``"zoo"`` recording the setting and :func:`code_digest`. ``fast``: the short
    setting; ``timeout``: seconds per cell (None: no limit); ``write``: save it in place. A cell
    that raises raises ``nbclient.exceptions.CellExecutionError``, naming the cell."""
    import nbclient
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}},
                                     extra_arguments=["--IPKernelApp.log_level=ERROR"])
    with _environment(fast):
        client.execute()
    nb.metadata["zoo"] = {"setting": "fast" if fast else "full", "code_sha256": code_digest(nb)}
    if write:
        nbformat.write(nb, path)
    return nb


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m analysis.notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to run: 04, 04_pretrain_llama or its file name "
                        "(default: all)")
    parser.add_argument("--fast", action="store_true", help="the short setting of the tests; writes nothing")
    args = parser.parse_args(argv)
    with usage_errors(parser):
        paths = find(args.names)
    for path in paths:
        start = time.perf_counter()
        execute(path, fast=args.fast, write=not args.fast)
        verb = "executed (fast setting, not written)" if args.fast else "executed and written"
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {verb} "
              f"in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
