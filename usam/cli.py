"""What every stage entrypoint does around its `run(cfg)`: user errors without tracebacks."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from usam.errors import UsamError

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
        log.error("%s", user)
        sys.exit(f"error: {user}")
    print(json.dumps(summary, default=str), flush=True)
    return summary
