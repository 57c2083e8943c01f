"""fishtune.report: the paper's figures and tables from a folder of result.json files.

    python -m fishtune.report outputs/multirun/<sweep> [--out DIR]     # or: fishtune-report ...

Modules: `collect` (results -> tidy DataFrame), `heatmap` (ladder heatmaps, Figs. 2-6, and arrow counts),
`table` (Table 2), `scaling` (Fig. 1), `build` (everything into one folder), `callback` (Hydra callback that
builds the report when a multirun ends). Each picture has a data function (DataFrames/arrays, tested) and a
separate drawing function. Only pandas, matplotlib (Agg) and fishtune.runner.results are used; importing this package
itself imports nothing heavy, so the Hydra callback stays cheap to load.
"""
