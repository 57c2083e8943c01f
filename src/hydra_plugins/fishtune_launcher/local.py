"""``hydra/launcher=local``'s target: hydra-submitit-launcher's LocalLauncher, from fishtune's plugin package
(so that each job's process knows the resolver naming its folder, registered by the package)."""

from __future__ import annotations

from hydra_plugins.hydra_submitit_launcher import submitit_launcher


class LocalLauncher(submitit_launcher.LocalLauncher):
    """Run each job of a sweep in its own local process through submitit."""
