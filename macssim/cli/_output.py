"""Terminal output every command shares: a plain aligned table, and turning a macssim
error into one line with exit code 1."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import click

from macssim._errors import MacssimError

__all__ = ["Progress", "echo_table", "format_table", "library_errors"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    click.echo(format_table(headers, rows))


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _cell(v: object) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.3f}"
    return str(v)


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """A ``MacssimError`` becomes ``Error: <message>`` and exit code 1, no traceback."""
    try:
        yield
    except MacssimError as e:
        raise click.ClickException(str(e)) from e


class Progress:
    """Progress of long work on stderr: a tqdm bar on a terminal; when stderr is piped or
    redirected (CI logs, ``| tee``), one plain line at every tenth of the work, so a log
    still shows how far it got without a bar's carriage returns.

    ``progress(done, total)`` is the callback the library functions take."""

    def __init__(self, desc: str, unit: str) -> None:
        import sys

        from tqdm import tqdm

        self._desc, self._unit = desc, unit
        self._tty = sys.stderr.isatty()
        self._bar = tqdm(total=0, unit=unit, desc=desc, file=sys.stderr) if self._tty else None
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.update(done - self._bar.n)
            return
        tenth = 10 * done // max(total, 1)
        if tenth != self._shown and (tenth > self._shown):
            self._shown = tenth
            click.echo(f"{self._desc}: {done}/{total} {self._unit}", err=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
