"""Hydra callback: build the report into the sweep folder when a multirun ends.

Enabled in conf/config.yaml (``hydra.callbacks.report``). Any error while reporting is logged and swallowed:
a finished sweep never fails because of its figures. Disable it with ``~hydra.callbacks.report``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


class ReportCallback(Callback):
    """``on_multirun_end``: `fishtune.report.build.build_report(<sweep dir>)` into ``<sweep dir>/report``."""

    def __init__(self, enabled: bool = True, out: str | None = None, pdf: bool = True) -> None:
        self.enabled, self.out, self.pdf = enabled, out, pdf

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not self.enabled:
            return
        try:
            sweep = Path(_sweep_dir(config))
            from .build import build_report

            written = build_report(sweep, self.out, formats=("png", "pdf") if self.pdf else ("png",))
            report = written[0].parent if written else sweep / "report"
            print(f"report: {len(written)} files in {report}")
        except Exception as e:  # noqa: BLE001 - a report must never crash the sweep
            log.warning("fishtune report failed: %s: %s", type(e).__name__, e, exc_info=True)
            print(f"report failed ({type(e).__name__}: {e}); run `python -m fishtune.report <sweep dir>` to retry")


def _sweep_dir(config: Any) -> str:
    try:
        return str(config.hydra.sweep.dir)
    except Exception:  # noqa: BLE001 - the config passed may lack the hydra node
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().sweep.dir)
