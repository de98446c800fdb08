"""python -m usam.container dataset=<name> [roots=[dir,...]] [out=dir] [offload=true] [augmented=false]

Stage 2: stage 1's records -> one training container (see usam/container/writer.py).
"""

from __future__ import annotations

from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from usam import CONF_DIR
from usam.cli import run_stage, save_run


def run(cfg: DictConfig) -> dict[str, Any]:
    writer = instantiate(cfg.writer)
    return save_run(cfg, writer.write())


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="container")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
