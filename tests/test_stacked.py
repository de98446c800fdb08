"""Several trials trained together (usam.stacked) give what training them one by one gives."""

from __future__ import annotations

import json

import pytest
import torch

from usam.errors import UsamError
from usam.hpo import SmacHPO
from usam.stacked import StackedMLPs, stacked_losses
from usam.train import Data, Objective, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [24, 12]  # hidden sizes: the maths is the same as 512-512, the test is 100x faster


def data(n: int = 403, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=g)
    return x, torch.sigmoid(x[:, :5].sum(1) / 2)


# Every setting differs in every searched value; batch sizes leave short last batches
# (403 = 6 x 64 + 19 = 4 x 100 + 3 = 57 x 7 + 4) and the epochs differ, so trials stop at
# different steps while the others go on.
HPS = [
    {"lr": 0.05, "momentum": 0.9, "batch_size": 64, "epochs": 3, "hidden": SMALL},
    {
        "lr": 0.01,
        "momentum": 0.3,
        "batch_size": 100,
        "epochs": 5,
        "hidden": SMALL,
        "weight_decay": 0.01,
    },
    {"lr": 0.08, "momentum": 0.0, "batch_size": 7, "epochs": 1, "hidden": SMALL},
]


def test_each_stacked_trial_ends_with_the_weights_of_its_own_sequential_run():
    x, y = data()
    stack = StackedMLPs(HPS, in_features=64, seed=3, device="cpu")
    stack.fit(x, y)
    trainer = Trainer(device="cpu", seed=3, progress=False)
    for i, hp in enumerate(HPS):
        alone, _ = trainer.fit(x, y, hp)
        together = stack.unstack(i)
        for a, b in zip(alone.parameters(), together.parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=0), i
        # and they did train apart: trial i is not trial i+1
        other = stack.unstack((i + 1) % len(HPS))
        assert not torch.allclose(next(other.parameters()), next(together.parameters()))


def test_stacked_validation_losses_equal_the_objective_one_by_one():
    x, y = data(503)
    d = Data(x[:403], y[:403], x[403:], y[403:])
    trainer = Trainer(device="cpu", seed=1, progress=False)
    objective = Objective(trainer, d, {"weight_decay": 0.001})
    one_by_one = [objective(hp) for hp in HPS]
    together = objective.many(HPS)
    assert together == pytest.approx(one_by_one, rel=1e-5)
    assert len(set(one_by_one)) == 3  # three different answers, each in its own place


def test_a_diverged_trial_counts_as_the_worst_loss_and_leaves_the_others_alone():
    x, y = data(503)
    d = Data(x[:403], y[:403], x[403:], y[403:])
    trainer = Trainer(device="cpu", seed=1, progress=False)
    wild = {**HPS[0], "lr": float("nan")}
    losses = stacked_losses(trainer, d, [HPS[1], wild])
    assert losses[1] == 1.0
    assert losses[0] == pytest.approx(Objective(trainer, d, {})(HPS[1]), rel=1e-5)


@pytest.mark.parametrize("hidden", [SMALL, [16]])
def test_trainer_step_eager_trains_like_autograd(hidden):
    x, y = data()
    hp = {**HPS[0], "hidden": hidden}
    seen = []
    ref, ref_losses = Trainer(device="cpu", seed=2, progress=False).fit(x, y, hp)
    model, losses = Trainer(device="cpu", seed=2, progress=False, step="eager").fit(
        x, y, hp, val=(x[:50], y[:50]), on_epoch=lambda e, tl, vl: seen.append((e, tl, vl))
    )
    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert losses == pytest.approx(ref_losses, rel=1e-5) and len(losses) == 3
    assert [e for e, _, _ in seen] == [0, 1, 2] and all(v is not None for *_, v in seen)


@pytest.mark.slow
def test_compiled_step_trains_like_the_eager_one():
    x, y = data()
    eager = StackedMLPs(HPS[:2], in_features=64, seed=0, device="cpu")
    eager.fit(x, y)
    compiled = StackedMLPs(HPS[:2], in_features=64, seed=0, device="cpu")
    compiled.fit(x, y, step="compile")
    for a, b in zip(eager.weights, compiled.weights, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_bad_step_settings():
    with pytest.raises(UsamError, match="trainer.step"):
        Trainer(device="cpu", step="graph")
    with pytest.raises(UsamError, match="cuda_graph needs a CUDA device"):
        StackedMLPs(HPS[:1], in_features=64, seed=0, device="cpu").fit(*data(), step="cuda_graph")
    with pytest.raises(UsamError, match="concurrent_trials"):
        SmacHPO(concurrent_trials=2, n_workers=2)
    with pytest.raises(UsamError, match="one architecture"):
        StackedMLPs([HPS[0], {**HPS[1], "hidden": [8]}], in_features=64, seed=0, device="cpu")


class OneByOne:
    """The same objective without `many`: SMAC's batches are trained one after another."""

    def __init__(self, objective: Objective):
        self.objective = objective

    def __call__(self, hp):
        return self.objective(hp)


def test_smac_with_concurrent_trials_gives_the_sequential_search(tmp_path):
    # both searches in one process: SMAC 2's proposals after its initial design are the same
    # within a process for the same seed and costs, but not always from one process to another
    x, y = data(503)
    d = Data(x[:403], y[:403], x[403:], y[403:])
    objective = Objective(Trainer(device="cpu", seed=0, progress=False), d, {"hidden": SMALL})
    kw = dict(n_trials=6, concurrent_trials=3, epochs=(1, 3), batch_size=(8, 64), progress=False)
    runs = {}
    for label, fn in {"together": objective, "in turn": OneByOne(objective)}.items():
        best, info = SmacHPO(**kw).search(fn, {"hidden": SMALL}, out_dir=tmp_path / label, name="t")
        history = json.loads((tmp_path / label / "t" / "0" / "runhistory.json").read_text())
        configs = [history["configs"][str(d["config_id"])] for d in history["data"]]
        runs[label] = best, info, configs
    (b1, i1, c1), (b2, i2, c2) = runs["together"], runs["in turn"]
    assert i1["trials_run"] == i2["trials_run"] == 6
    assert c1 == c2  # the same six configurations, in the same order
    assert i1["trial_losses"] == i2["trial_losses"]  # as SMAC was told them: identical
    assert len(set(i1["trial_losses"])) >= 4  # different settings, different losses
    assert b1 == b2 and i1["best_loss"] == pytest.approx(min(i1["trial_losses"]))
