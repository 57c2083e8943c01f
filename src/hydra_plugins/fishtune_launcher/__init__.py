"""fishtune's Hydra launcher plugins (Hydra only loads launchers from the ``hydra_plugins`` namespace).

Importing this package registers fishtune's ``${fishtune.job:...}`` resolver (a job's folder name): a job run
by a submitit launcher unpickles its launcher, so this import happens in the job's process too.
"""

from fishtune.runner.overrides import register_resolver

register_resolver()
