"""What the command lines of ``analysis`` share.

- :class:`ArgumentParser` (:class:`zoo.cli.ArgumentParser`): a bad setting is one line on stderr,
  ``PROG: error: what was wrong and what to do``, and exit status 2, never a traceback.
- :func:`usage_errors`: the setting-up phase of a command (checking values, finding data and
  files) runs inside it, so the errors that phase raises for a bad setting (``ValueError``,
  ``KeyError`` such as an unknown optimizer name, ``OSError`` such as a missing data set) become
  such usage errors. The work itself runs outside it: a failure there is a bug and keeps its
  traceback.
- Argument types that check what they parse: :func:`integer`, :func:`int_list`,
  :func:`float_range`, :func:`choice_list`, :func:`shape`, :func:`shape_list`.
- :class:`Progress` and :func:`track`: a tqdm bar on a terminal; where stderr is not one (a log
  file, CI, ``nohup``), a few plain lines instead of every refresh of the bar.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from zoo.cli import ArgumentParser

__all__ = ["ArgumentParser", "usage_errors", "make_folder", "integer", "int_list", "float_range", "choice_list", "shape",
           "shape_list", "Progress", "track"]

T = TypeVar("T")


@contextmanager
def usage_errors(parser: ArgumentParser):
    """Turn ``ValueError``, ``KeyError`` and ``OSError`` raised inside into ``parser.error``."""
    try:
        yield
    except (ValueError, KeyError, OSError) as error:
        if isinstance(error, OSError) and error.filename is not None and error.strerror:
            message = f"{error.filename}: {error.strerror}"
        else:
            message = str(error.args[0]) if error.args else type(error).__name__
        parser.error(message)


def make_folder(path, option: str = "--out") -> Path:
    """Make the output folder ``path`` (and its parents); a ``ValueError`` naming ``option`` when it
    cannot be made, so that a command fails before its work, not after."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{option} {path}: cannot make this folder ({error.strerror or error})") from None
    return Path(path)


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _int(text: str, minimum: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what} >= {minimum}, got {value}")
    return value


def integer(minimum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer, at least ``minimum``."""
    return lambda text: _int(text, minimum, "an integer")


def int_list(minimum: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated integers (``0,100,190``), each at least ``minimum``;
    the empty string is the empty tuple."""
    return lambda text: tuple(_int(item, minimum, "comma-separated integers") for item in _items(text))


def float_range(low: float, high: float = math.inf, *, open_low: bool = False) -> Callable[[str], float]:
    """An argparse type: a float in [low, high] (``(low, high]`` with ``open_low``)."""
    interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}") from None
        if not (low < value if open_low else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {value:g}")
        return value
    return parse


def choice_list(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: comma-separated values, each one of ``allowed``; at least one."""
    def parse(text: str) -> tuple[str, ...]:
        items = _items(text)
        wrong = [item for item in items if item not in allowed]
        if wrong or not items:
            raise argparse.ArgumentTypeError(f"{', '.join(map(repr, wrong)) or 'nothing'} given; allowed "
                                             f"comma-separated values of {', '.join(allowed)}")
        return tuple(items)
    return parse


def shape(text: str) -> tuple[int, ...]:
    """An argparse type: a tensor shape such as ``512x2048`` (positive sizes)."""
    try:
        sizes = tuple(int(size) for size in text.lower().split("x"))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected a shape of positive sizes such as 512x2048, got {text!r}")
    return sizes


def shape_list(text: str) -> tuple[tuple[int, ...], ...]:
    """An argparse type: comma-separated shapes (``1024x512,512x1024``); at least one."""
    shapes = tuple(shape(item) for item in _items(text))
    if not shapes:
        raise argparse.ArgumentTypeError("expected comma-separated shapes such as 1024x512,512x1024, got nothing")
    return shapes


class Progress:
    """Progress through ``total`` steps, ``initial`` of them already done.

    On a terminal (stderr is a tty) a tqdm bar with the ``status`` of the last :meth:`update` as its
    postfix. Otherwise one line per ``lines``-th of the steps (and at the last), to stderr:
    ``DESC: STEP/TOTAL (PCT%), SECONDS s, key value ...``. ``enabled=False`` shows nothing."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, enabled: bool = True, lines: int = 4):
        self.total, self.desc, self.n, self.lines = total, desc, initial, max(1, lines)
        self.enabled, self.start, self.bar = enabled, time.perf_counter(), None
        self._reported = initial
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False)

    def update(self, n: int = 1, **status) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if status:
                self.bar.set_postfix({k: _short(v) for k, v in status.items()})
            return
        if not self.enabled or self.total <= 0:
            return
        marks = [self.total * k // self.lines for k in range(1, self.lines + 1)]
        if any(self._reported < mark <= self.n for mark in marks):
            self._reported = self.n
            fields = "".join(f", {k} {_short(v)}" for k, v in status.items())
            print(f"{self.desc}: {self.n}/{self.total} ({100 * self.n // self.total}%), "
                  f"{time.perf_counter() - self.start:.1f} s{fields}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], desc: str, *, enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items`` with a :class:`Progress` of their number."""
    items = list(items)
    with Progress(len(items), desc, enabled=enabled) as progress:
        for item in items:
            yield item
            progress.update()


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
