"""fishtune's Hydra-free library: Fisher information (`fisher`, the batched per-sample engine `_persample`
with `_chunking`, the per-sample `losses`), `masks`, masked training with sparse deltas (`masked`), sample and
parameter selection (`selection`), the IRD walk (`ird`) and atomic `files`. It imports nothing outside this
folder (tests/test_layers.py); `import fishtune as ft` exposes its public names."""
