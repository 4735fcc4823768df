"""The groups of an axis: which group every filter of a block belongs to, as integer codes into a list
of labels (what `Histograms` counts per, step 4 of `ops.shifts`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_DEPTH_BINS = 10
DEPTH_AXIS = "depth"
"""The axis of `conv_depth_norm` in bins."""
MISSING = "(missing)"
"""Group label of rows whose axis value is null."""


def group_codes(column: pa.Array | pa.ChunkedArray, mapping: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """Codes and labels of a column's values (nulls labelled MISSING); with `mapping`, the label of a
    value is mapping[value] (e.g. model_id -> an extra catalog column), MISSING when absent."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    runs = pc.run_end_encode(column)
    if len(runs.values) * 8 <= len(column):
        # Rows come grouped (by model, layer): encoding the runs' values is cheaper than all rows' (an
        # estimate from one timing on the 1M-filter bench DB's task column: 4.4 vs 10.4 ns a row).
        run_codes, labels = _dictionary_codes(runs.values, mapping)
        lengths = np.diff(runs.run_ends.to_numpy(), prepend=0)
        return np.repeat(run_codes, lengths), labels
    return _dictionary_codes(column, mapping)


def _dictionary_codes(column: pa.Array, mapping: dict | None) -> tuple[np.ndarray, list[str]]:
    """int32 codes (as blocks keep them) into labels sorted and without repeats (several values may map
    to one label), so that a block takes them as they are."""
    encoded = pc.dictionary_encode(column, null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    values = encoded.dictionary.to_pylist()
    if mapping is not None:
        values = [mapping.get(v) for v in values]
    names = [MISSING if v is None else str(v) for v in values]
    labels = sorted(set(names))
    if labels == names:
        return codes, labels
    position = {label: i for i, label in enumerate(labels)}
    return np.array([position[name] for name in names], np.int32)[codes], labels


def depth_labels(n_bins: int = DEFAULT_DEPTH_BINS) -> list[str]:
    """'[0.0, 0.1]', '(0.1, 0.2]', ..., '(0.9, 1.0]' for 10 bins."""
    edges = [f"{k / n_bins:.{max(1, len(str(n_bins)) - 1)}f}" for k in range(n_bins + 1)]
    return [("[" if k == 0 else "(") + f"{edges[k]}, {edges[k + 1]}]" for k in range(n_bins)]


def depth_codes(conv_depth_norm: np.ndarray, n_bins: int = DEFAULT_DEPTH_BINS) -> tuple[np.ndarray, list[str]]:
    """Bin of every conv_depth_norm: [0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]."""
    inner_edges = np.arange(1, n_bins) / n_bins
    codes = np.searchsorted(inner_edges, np.asarray(conv_depth_norm, np.float64), side="left")
    return codes.astype(np.int32), depth_labels(n_bins)


@dataclass(frozen=True)
class Axis:
    """How a block's rows get their group: a filters column, conv_depth_norm bins, or a models.lance
    column looked up through model_id (`mapping`). `ops.shifts.resolve_axis` makes one from a name."""

    name: str
    column: str
    mapping: dict | None = None
    depth_bins: int = DEFAULT_DEPTH_BINS

    def codes(self, batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, list[str]]:
        """Codes and labels of the rows of a batch read from filters.lance (its `column`)."""
        if self.name == DEPTH_AXIS:
            return depth_codes(batch.column(self.column).to_numpy(), self.depth_bins)
        return group_codes(batch.column(self.column), self.mapping)

    def order(self) -> list[str] | None:
        """The groups' own order where the axis has one (depth bins), else None (by label)."""
        return depth_labels(self.depth_bins) if self.name == DEPTH_AXIS else None


def groupings_of(batch: pa.RecordBatch | pa.Table, axes: tuple[Axis, ...]) -> list[tuple[np.ndarray, list[str]]]:
    """(codes, labels) of every axis for the rows of a batch read from filters.lance."""
    return [axis.codes(batch) for axis in axes]
