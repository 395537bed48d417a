"""CSV tables users hand to XWin (a cases CSV, a labels CSV): read whole, or refused naming the file and the problem."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from ..errors import XWinInputError
from .validate import file_problem


def read_csv_rows(path: str | os.PathLike, what: str) -> list[dict[str, Any]]:
    """The data rows of a UTF-8 CSV file (a byte-order mark, as Excel writes, is not part of the first column's name)
    as dicts keyed by the header; a short row's missing values are None. ``what`` names the table in errors ("cases
    CSV"). Refused: a file that cannot be read (a FIFO, a device, not UTF-8, malformed), a header naming a column
    twice (which of the two would count is a guess) and a NUL character in a cell."""
    path = Path(path)
    problem = file_problem(path)  # a FIFO or a device would block or never end
    if problem:
        raise XWinInputError(path, f"cannot read the {what}: {problem}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            names = reader.fieldnames or []
            twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
            if twice is not None:
                raise XWinInputError(path, f"the {what} names the column {twice!r} twice")
            rows = list(reader)
    except OSError as exc:
        raise XWinInputError(path, f"cannot read the {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise XWinInputError(path, f"cannot read the {what}: it is not UTF-8 text (byte "
                                   f"0x{exc.object[exc.start]:02x})") from None
    except csv.Error as exc:
        raise XWinInputError(path, f"cannot read the {what}: {exc}") from None
    for number, row in enumerate(rows, start=1):
        column = next((k for k, v in row.items() if isinstance(v, str) and "\0" in v), None)
        if column is not None:
            raise XWinInputError(path, f"the {what} holds a NUL character in column {column!r} of data row "
                                       f"{number} (no file name or label contains one: a damaged file?)")
    return rows
