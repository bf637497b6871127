"""Terminal output every command shares: a plain aligned table, and turning a macssim
error into one line with exit code 1."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import click

from macssim._errors import MacssimError

__all__ = ["format_table", "echo_table", "library_errors"]


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
