"""Tables: one (columns, rows) rendered as console text, CSV or markdown.

Rows hold raw values (str, int, float, bool, None). CSV keeps them as they are (full precision,
for programs); text and markdown format them for people with `format_cell`.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path

Rows = Sequence[Sequence[object]]


def format_cell(value: object, digits: int = 4) -> str:
    """A cell as people read it: floats with `digits` decimals (3 significant digits below
    0.01, so learning rates stay readable), NaN as "nan", None as ""."""
    if value is None:
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 0.01:
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def text_table(columns: Sequence[str], rows: Rows, *, digits: int = 4) -> str:
    """A console table: columns padded to their widest cell, two spaces apart, a dashed rule
    under the header. Columns whose cells are all numbers are right-aligned."""
    check_rows(columns, rows)
    cells = [[format_cell(value, digits) for value in row] for row in rows]
    numeric = [_is_numeric_column([row[index] for row in rows]) for index in range(len(columns))]
    widths = [max(len(cell) for cell in column) for column in zip(columns, *cells, strict=True)]

    def line(row: Iterable[str]) -> str:
        padded = (
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(columns), rule, *(line(row) for row in cells)])


def csv_table(columns: Sequence[str], rows: Rows) -> str:
    """CSV text with a header row; values written as they are (floats at full precision)."""
    check_rows(columns, rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(["" if value is None else value for value in row] for row in rows)
    return buffer.getvalue()


def markdown_table(columns: Sequence[str], rows: Rows, *, digits: int = 4) -> str:
    """A markdown (GitHub) table; cells formatted like `text_table`'s, "|" escaped."""
    check_rows(columns, rows)

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    header = [line(columns), line("---" for _ in columns)]
    body = [line(format_cell(value, digits) for value in row) for row in rows]
    return "\n".join(header + body) + "\n"


def table_for_file(columns: Sequence[str], rows: Rows, file_name: str, *, digits: int = 4) -> str:
    """The table in the format its file name asks for: `.csv`, `.md` or `.txt`."""
    suffix = Path(file_name).suffix.lower()
    if suffix == ".csv":
        return csv_table(columns, rows)
    if suffix == ".md":
        return markdown_table(columns, rows, digits=digits)
    if suffix == ".txt":
        return text_table(columns, rows, digits=digits) + "\n"
    raise ValueError(f"table file {file_name!r} must end in .csv, .md or .txt")


def check_rows(columns: Sequence[str], rows: Rows) -> None:
    """Raise ValueError when a row's width differs from the number of columns."""
    for index, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(
                f"row {index} has {len(row)} cells but there are {len(columns)} columns "
                f"{list(columns)}"
            )


def _is_numeric_column(values: list[object]) -> bool:
    """True when the column holds numbers (bools are not) and nothing else but blanks."""
    numbers_found = False
    for value in values:
        if value is None:
            continue
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return False
        numbers_found = True
    return numbers_found
