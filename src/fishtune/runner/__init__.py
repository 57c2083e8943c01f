"""What runs an experiment from a config: Hydra `overrides`, the resumable `experiment`, the Slurm `launch`
helpers and the run record (`results`: result.json's schema). The typed schema is `fishtune.config`, below
every layer that reads it."""
