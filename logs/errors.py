"""The one exception type for bad logged data, so callers and the CLI can catch it narrowly."""

from __future__ import annotations


class LogValidationError(ValueError):
    """A logged-session file or table breaks the canonical format.

    The message always names the file, and where it applies the first offending row (0-based, as
    stored in the file) and the column, so a researcher can open the file and look.

    Attributes:
        file: file (or table) name, e.g. ``impressions.parquet``.
        row: first offending row, or ``None`` when the problem is not about one row.
        column: offending column, or ``None``.
        reason: what is wrong, with the offending value and the allowed values.
    """

    def __init__(
        self, file: str, reason: str, *, row: int | None = None, column: str | None = None
    ) -> None:
        self.file = file
        self.row = row
        self.column = column
        self.reason = reason
        where = [file]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {reason}")


# what reading or converting broken data raises below our own checks (pyarrow, numpy, pandas)
DATA_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, IndexError, KeyError, OverflowError, TypeError, UnicodeError, ValueError,
)  # fmt: skip


def as_validation_error(file: str, err: BaseException, doing: str) -> LogValidationError:
    """``err`` (raised while ``doing``) as a one-line :class:`LogValidationError` on ``file``."""
    if isinstance(err, LogValidationError):
        return err
    text = str(err).strip().splitlines()
    detail = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return LogValidationError(file, f"{doing} failed ({detail})")
