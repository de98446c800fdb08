"""Stage 2, the training container: `reader.py` (`Container`, numpy only), `writer.py`
(`ContainerWriter`: stage 1's records to a container, built from `rows.py`, the pure
record-to-rows maths, and `files.py`, the files) and the entrypoint `python -m usam.container`
(`__main__.py`).

`from usam.container import Container` imports the reader alone: trainers, evaluators and
notebooks that read containers need neither torch nor Hydra for it.
"""

from __future__ import annotations

from typing import Any

from usam.container.reader import Container, is_container

__all__ = ["Container", "ContainerWriter", "is_container", "run"]


def __getattr__(name: str) -> Any:
    # the writer and the stage import more (tqdm, Hydra): only when asked for
    if name == "ContainerWriter":
        from usam.container.writer import ContainerWriter

        return ContainerWriter
    if name == "run":
        from usam.container.__main__ import run

        return run
    raise AttributeError(f"module 'usam.container' has no attribute {name!r}")
