"""Shared fixtures: composing the real configs with every path under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg("extract", ["dataset=sample", ...]) -> DictConfig with paths under tmp_path."""

    def _compose(config_name: str | None, overrides: list[str] = ()):
        GlobalHydra.instance().clear()
        paths = (
            []
            if config_name is None
            else [
                f"paths.data={tmp_path / 'data'}",
                f"paths.inference={tmp_path / 'inference'}",
                f"paths.checkpoints={tmp_path / 'checkpoints'}",
                f"paths.log_dir={tmp_path / 'outputs'}",
                f"paths.output_dir={tmp_path / 'run'}",
            ]
        )
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=paths + list(overrides))
        GlobalHydra.instance().clear()
        (tmp_path / "run").mkdir(exist_ok=True)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def one_thread():
    """2 shared cores: OpenMP threads spinning against each other make tiny matmuls 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
