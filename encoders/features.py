"""Numeric and categorical feature columns as a dense float table, beside the text embeddings.

Datasets whose items have no natural text (the Open Bandit Dataset's items are four hashed
columns) describe them with feature columns; so do users. :func:`feature_table` turns such
columns into one ``float32[n, F]`` matrix that the policy and the neural click model read next
to the text embeddings:

* a numeric column becomes one z-scored column (missing values: 0, the mean);
* a categorical column (strings, booleans) becomes a one-hot block over its
  ``max_categories - 1`` most frequent values plus one "other" column;
* a column with a single value carries no information and is dropped.

Features are never turned into text: BERT reads texts, this table reads features.
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_table"]

MAX_CATEGORIES = 32


def feature_table(
    columns: dict[str, np.ndarray], n_rows: int, max_categories: int = MAX_CATEGORIES
) -> tuple[np.ndarray, list[str]]:
    """``(float32[n_rows, F], names)`` from feature columns (see the module docstring).

    Args:
        columns: name -> array of length ``n_rows`` (the log's ``item_features`` or
            ``user_features``).
        n_rows: rows of the table (items or users), used when there are no columns.
        max_categories: one-hot width per categorical column, including "other"; >= 2.
    """
    if max_categories < 2:
        raise ValueError(f"max_categories={max_categories}; allowed: >= 2")
    blocks: list[np.ndarray] = []
    names: list[str] = []
    for name in sorted(columns):
        values = np.asarray(columns[name])
        if len(values) != n_rows:
            raise ValueError(f"feature column {name!r} has {len(values)} rows, expected {n_rows}")
        if values.dtype.kind in "iuf":
            x = values.astype(np.float64)
            known = ~np.isnan(x)
            if known.sum() < 2 or np.nanstd(x) == 0:
                continue
            z = np.zeros(n_rows)
            z[known] = (x[known] - x[known].mean()) / x[known].std()
            blocks.append(z[:, None])
            names.append(name)
            continue
        text = np.array(["" if v is None else str(v) for v in values], dtype=object)
        kinds, codes, counts = np.unique(text, return_inverse=True, return_counts=True)
        if len(kinds) < 2:
            continue
        top = np.argsort(-counts, kind="stable")[: max_categories - 1]
        slot = np.full(len(kinds), len(top))  # "other"
        slot[top] = np.arange(len(top))
        width = len(top) + (len(kinds) > len(top))
        onehot = np.zeros((n_rows, width))
        onehot[np.arange(n_rows), slot[codes]] = 1.0
        blocks.append(onehot)
        names += [f"{name}={kinds[i]}" for i in top]
        if width > len(top):
            names.append(f"{name}=<other>")
    if not blocks:
        return np.zeros((n_rows, 0), dtype=np.float32), []
    return np.concatenate(blocks, axis=1).astype(np.float32), names
