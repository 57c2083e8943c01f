"""fishtune.report: the paper's figures and tables from a folder of result.json files.

    python -m fishtune.report outputs/multirun/<sweep> [--out DIR]     # or: fishtune-report ...

Modules: `collect` (results -> tidy DataFrame), `heatmap` (ladder heatmaps, Figs. 2-6, and arrow counts),
`table` (Table 2), `scaling` (Fig. 1), `case` and `case_page` (the SST-2 case study: Table 3, Figs. 1, 2, 5;
`table3(df)` for a notebook), `masks` (what selection-only runs' masks hold: `load_summaries`, `mask_shares`,
`mask_overlaps`, exposed here), `build` (everything into one folder), `callback` (Hydra callback that
builds the report when a multirun ends). Each picture has a data function (DataFrames/arrays, tested) and a
separate drawing function. Only pandas, matplotlib (Agg), fishtune.runner.results and the numpy-only
fishtune.core.mask_summary are used; importing this package itself imports nothing heavy, so the Hydra callback
stays cheap to load.
"""

from __future__ import annotations

_MASKS = ("load_summaries", "mask_shares", "mask_overlaps", "overlap_summary", "zero_fisher")  # the masks page
__all__ = ["table3", *_MASKS]


def __getattr__(name: str):
    """``table3(df)`` (Table 3 of the SST-2 case study as a frame, see `case`) and the masks page's data
    functions, loaded on first use so that importing the package stays cheap."""
    if name == "table3":
        from .case import table3

        return table3
    if name in _MASKS:
        from . import masks

        return getattr(masks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
