"""usam.options.unset: one rule for "no value", shared by every option that takes null."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from usam.container.reader import Container
from usam.errors import UsamError
from usam.evaluate import Evaluator
from usam.options import estimators, unset
from usam.pipeline import training_split


def test_unset_is_none_and_the_command_line_spellings_of_null_only():
    assert all(unset(v) for v in (None, "", "None", "null", Path("None")))
    # a near miss is a name, and a value that is not text is never null
    assert not any(unset(v) for v in ("none", "NULL", "None/x", " ", 0, False, [], {}))


@pytest.mark.parametrize("null", ["None", "null", ""])
def test_every_option_that_takes_null_reads_it_by_that_rule(null):
    evaluator = Evaluator(model=null, device="cpu")
    assert evaluator.model is None
    assert evaluator.load_bundles(null, container=None) == {}
    assert estimators(OmegaConf.create({"estimators": null})) is None
    assert training_split(null, ["train", "val"], "val", "davis") is None
    with pytest.raises(UsamError, match="no val_container given"):
        Container.open(null, what="val_container")


def test_a_name_that_only_looks_like_null_stays_a_name(tmp_path):
    assert Evaluator(model="none", device="cpu").model == "none"
    with pytest.raises(UsamError, match="train_split=none: dataset 'davis' has splits train, val"):
        training_split("none", ["train", "val"], "val", "davis")
    with pytest.raises(UsamError, match="container .*none not found"):
        Container.open(tmp_path / "none")
