"""``hydra/launcher=slurm``'s target: hydra-submitit-launcher's SlurmLauncher with fishtune's additions.

The behaviour lives in :mod:`fishtune.runner.launch` (stop between ladder cells when Slurm ends a job, one-line
sbatch errors); this module only gives the class a home where Hydra's plugin discovery accepts it.
"""

from __future__ import annotations

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from fishtune.runner.launch import SlurmLauncherMixin


class SlurmLauncher(SlurmLauncherMixin, submitit_launcher.SlurmLauncher):
    """Submit each job of a sweep to Slurm through submitit (see fishtune.runner.launch)."""
