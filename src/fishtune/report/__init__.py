"""fishtune.report: the paper's figures and tables from a folder of result.json files.

    python -m fishtune.report outputs/multirun/<sweep> [--out DIR]     # or: fishtune-report ...

Modules: `collect` (results -> tidy DataFrame), `heatmap` (ladder heatmaps, Figs. 2-6, and arrow counts), `masks`
(what selection-only runs' masks hold: `load_summaries`, `mask_shares`, `mask_overlaps`, exposed here),
`table` (Table 2), `scaling` (Fig. 1), `build` (everything into one folder), `callback` (Hydra callback that
builds the report when a multirun ends). Each picture has a data function (DataFrames/arrays, tested) and a
separate drawing function. Only pandas, matplotlib (Agg), fishtune.runner.results and the numpy-only
fishtune.core.mask_summary are used; importing this package itself imports nothing heavy, so the Hydra callback
stays cheap to load.
"""

_MASKS = ("load_summaries", "mask_shares", "mask_overlaps", "overlap_summary", "zero_fisher")  # the masks page


def __getattr__(name: str):
    """The masks page's data functions, loaded on first use (``from fishtune.report import mask_shares``)."""
    if name in _MASKS:
        from . import masks

        return getattr(masks, name)
    raise AttributeError(f"module 'fishtune.report' has no attribute {name!r}")
