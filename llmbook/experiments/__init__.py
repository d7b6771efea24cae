"""Experiments: seeded ablation grids with confidence intervals over seeds (Part 10).

Introduced in {doc}`/book/part10/05-ablations`.
"""

from llmbook.experiments.ablate import (
    ResultsError,
    TornRecordWarning,
    load_results,
    metric_table,
    run_grid,
    summarize,
)
from llmbook.experiments.grid import GRIDS, AblationGrid, equal_params_width
from llmbook.experiments.stats import (
    Interval,
    PairedDifference,
    RankFlip,
    mean_ci,
    paired_differences,
    rank_flips,
    t_quantile,
)

__all__ = [
    "GRIDS",
    "AblationGrid",
    "Interval",
    "PairedDifference",
    "RankFlip",
    "ResultsError",
    "TornRecordWarning",
    "equal_params_width",
    "load_results",
    "mean_ci",
    "metric_table",
    "paired_differences",
    "rank_flips",
    "run_grid",
    "summarize",
    "t_quantile",
]
