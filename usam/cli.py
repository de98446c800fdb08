"""What every stage entrypoint does around its `run(cfg)`: user errors without tracebacks, and
the run folder's summary.json and resolved config.yaml."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from usam.errors import UsamError
from usam.storage import write_json

log = logging.getLogger("usam")


def user_error(err: BaseException | None) -> UsamError | None:
    """The UsamError behind `err`, if any: hydra.utils.instantiate wraps what constructors raise.

    Only explicit causes (`raise ... from err`) count, so a bug raised while handling a
    UsamError still shows its traceback.
    """
    while err is not None:
        if isinstance(err, UsamError):
            return err
        err = err.__cause__
    return None


def run_stage(run: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> dict[str, Any]:
    """Call `run(cfg)`; a UsamError becomes one clear line and exit status 1.

    The summary is printed as JSON on the last line of stdout so scripts can read it.
    """
    try:
        summary = run(cfg)
    except Exception as err:
        user = user_error(err)
        if user is None:
            raise
        # a library's text inside a UsamError (torch's state-dict report, an OmegaConf
        # error) may span lines; the command line still says it on one
        line = " ".join(str(user).split())
        log.error("%s", line)
        sys.exit(f"error: {line}")
    print(json.dumps(summary, default=str), flush=True)
    return summary


def save_run(cfg: DictConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Write `summary.json` and the resolved `config.yaml` into the run folder; return the summary."""
    out = Path(cfg.paths.output_dir)
    write_json(out / "summary.json", summary)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    return summary
