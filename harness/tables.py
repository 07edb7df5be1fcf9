"""The one plain-text table formatter: columns padded to their widest cell, two spaces apart.

Used by every command that prints a table on the terminal (`harness status`, `harness config`,
evaluation and comparison summaries), so they all look alike.
"""

from __future__ import annotations

from typing import Any, Sequence


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None,
                 align: str | None = None, last_free: bool = False, rules: Sequence[int] = ()) -> str:
    """`rows` (and `header`) as aligned text lines.

    `align`: one letter per column, `l` (default) or `r` (numbers); `last_free`: the last column is not
    padded (long free text at the end of each line); `rules`: a line of dashes, as wide as the widest
    line, before each of these lines (counted with the header; negative from the end: 1 and -1 set the
    header and a last "mean" row apart).
    """
    table = [[str(cell) for cell in row] for row in ([header] if header else []) + [list(row) for row in rows]]
    if not table:
        return ""
    columns = max(len(row) for row in table)
    for row in table:
        row.extend([""] * (columns - len(row)))
    widths = [max(len(row[index]) for row in table) for index in range(columns)]
    align = (align or "").ljust(columns, "l")
    lines = []
    for row in table:
        cells = []
        for index, cell in enumerate(row):
            if last_free and index == columns - 1:
                cells.append(cell)
            else:
                cells.append(cell.rjust(widths[index]) if align[index] == "r" else cell.ljust(widths[index]))
        lines.append("  ".join(cells).rstrip())
    if rules:
        rule = "-" * max(len(line) for line in lines)
        before = {position % len(lines) for position in rules}
        lines = [part for index, line in enumerate(lines) for part in ([rule] if index in before else []) + [line]]
    return "\n".join(lines)
