"""Distribution shift between groups of filters: the study's recipe (design.md, "Distribution shift")
as small aggregates that merge, so blocks combine in any order on any number of workers. Ray-free:
the same functions run in one process (`analyse`) and per block in the Ray flow (flows/shifts.py).

The steps, numbered the same in code, docstrings and docs (docs/shifts.md):

    step 1  read and peak-scale  every filter divided by its own max |w|      aggregates.py
    step 2  moments -> basis     Moments per block, merged -> Basis (PCA)     aggregates.py
    step 3  global range         CoefficientRange: min / max per component    aggregates.py
                                 -> one range for all components (the study's)
    step 4  histograms           Histograms per group x component, that range aggregates.py, groups.py
                                 (AxesHistograms: every axis in the same pass)
    step 5  symmetric KL         densities floored at float32 eps, every      divergence.py
                                 pair of groups, weighted by the basis

Each step needs the one before: the bins need the global range of the projection, which needs the
basis, which needs every filter. A basis stored by an earlier run (tables.py) skips steps 2 and 3.
Around them: selection.py checks the inputs once (DB, axis, predicate); tables.py writes and reads
DIR/analysis/.
"""

from ops.shifts.aggregates import (
    CHUNK_ROWS,
    COMPONENT_SCALE,
    DEFAULT_BINS,
    GLOBAL_RANGE,
    N_COMPONENTS,
    PER_COMPONENT_RANGE,
    QUANTUM,
    RANGE_MODES,
    SCALE,
    SCALE_BITS,
    AxesHistograms,
    Basis,
    CoefficientRange,
    Histograms,
    Moments,
    ScaledBlock,
    peak_scaled,
    drop_spare_blocks,
    scaled_block_and_moments,
    scaled_q,
    spare_blocks,
    weights_array,
)
from ops.shifts.divergence import EPSILON, SORTS, ShiftResult, analyse, binned_kde, default_sort, probabilities, silverman_bandwidth, symmetric_kl_matrix
from ops.shifts.groups import DEFAULT_DEPTH_BINS, DEPTH_AXIS, MISSING, Axis, depth_codes, depth_labels, group_codes, groupings_of
from ops.shifts.selection import (
    DEFAULT_SELECTION,
    Selection,
    ShiftInputError,
    axis_names,
    check_groups,
    resolve_axis,
    select_filters,
    selection_predicate,
)
from ops.shifts.tables import StoredBasis, basis_table, histograms_table, load_basis, shifts_table, stored_basis_for, write_analysis

__all__ = [
    "CHUNK_ROWS", "COMPONENT_SCALE", "DEFAULT_BINS", "DEFAULT_DEPTH_BINS", "DEFAULT_SELECTION", "DEPTH_AXIS", "EPSILON",
    "GLOBAL_RANGE", "MISSING", "N_COMPONENTS", "PER_COMPONENT_RANGE", "QUANTUM", "RANGE_MODES",
    "SCALE", "SCALE_BITS", "SORTS",
    "AxesHistograms", "Axis", "Basis", "CoefficientRange", "Histograms", "Moments", "ScaledBlock", "Selection", "ShiftInputError", "ShiftResult",
    "StoredBasis", "analyse", "axis_names", "basis_table", "binned_kde", "check_groups",
    "default_sort", "depth_codes", "depth_labels", "group_codes", "groupings_of", "histograms_table", "load_basis", "peak_scaled", "probabilities", "resolve_axis", "scaled_block_and_moments", "spare_blocks", "drop_spare_blocks",
    "scaled_q", "select_filters", "selection_predicate", "shifts_table", "silverman_bandwidth", "stored_basis_for",
    "symmetric_kl_matrix", "weights_array", "write_analysis",
]
