"""What runs an experiment from a config: the typed `config` schema, Hydra `overrides`, the resumable
`experiment`, the Slurm `launch` helpers and the run record (`results`: result.json's schema)."""
