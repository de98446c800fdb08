"""Stage 3 speed: usam's trainer vs a per-sample Dataset + DataLoader loop, same hyperparameters.

    python benchmarks/train.py [--rows 100000] [--epochs 2] [--target iou_large] [--dataset davis]
                               [--threads N] [--device cpu] [--steps eager compile cuda_graph]
                               [--stack 8] [--smac-trials 100 --smac-rows 1000000 --concurrent 16
                                --smac-walltime 240]

Builds a synthetic container (random tokens, through the real record -> container path),
then trains one target for `--epochs` epochs with
  - usam.train.Trainer.fit: tensors on the device once, seeded randperm index batches;
  - the published approach: a torch Dataset whose __getitem__ builds one sample
    (concatenate the two tokens, shift and clip the target), a shuffling DataLoader
    that collates it into batches, and `loss.item()` per batch,
and prints seconds per epoch for both and the ratio. Both do the same optimiser steps on
the same rows; neither validates per epoch.

  --steps S...   also time Trainer.fit with trainer.step=S (usam.stacked's step: no autograd,
                 `compile` = torch.compile, `cuda_graph` = captured once and replayed)
  --stack K      K trials (K learning rates) trained one after another vs stacked together
                 (what hpo.concurrent_trials=K does), seconds per trial and the ratio
  --smac-trials  a SMAC search (usam.hpo.SmacHPO) on --smac-rows synthetic rows made directly
                 as tensors on the device (low-rank tokens, a learnable target), with
                 --concurrent trials per batch; --smac-walltime stops it early and the script
                 extrapolates to --smac-trials from the trials done.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from usam.schema import SIZES
from usam.synthetic import make_record, write_record

MODELS = SIZES


def build_container(root: Path, rows: int, instances: int = 10, templates: int = 16) -> Path:
    """`rows` rows (4 models x `instances` per image), tokens random, targets spread over [0, 1]."""
    rng = np.random.default_rng(0)
    recs = []
    for _ in range(templates):  # a few distinct records, cycled: writing stays fast
        fields = {
            m: {
                "original": {
                    f: rng.uniform(0, 1, instances).tolist()
                    for f in ("iou", "unsupervised_iou", "iou_dense_prompt")
                }
            }
            for m in MODELS
        }
        rec, tens = make_record(
            "x.jpg",
            "x",
            instances=[(i + 1, 100) for i in range(instances)],
            models=MODELS,
            fields=fields,
        )
        for m in MODELS:
            tens[f"{m}/original/iou_token"] = rng.normal(size=(instances, 256)).astype(np.float32)
            tens[f"{m}/original/mask_tokens"] = rng.normal(size=(instances, 3, 256)).astype(
                np.float32
            )
        recs.append((rec, tens))
    images = -(-rows // (len(MODELS) * instances))
    per_group = min(10, max(1, images // 2))  # the train/val split needs two groups
    for k in range(images):
        rec, tens = recs[k % templates]
        rec = {
            **rec,
            "name": f"JPEGImages/v{k // per_group:05d}/{k % per_group:05d}.jpg",
            "group": f"v{k // per_group:05d}",
        }
        write_record(root / "records", rec, tens)
    from usam.container import ContainerWriter

    ContainerWriter(roots=[root / "records"], out=root / "container").write()
    return root / "container"


class PerSampleDataset(torch.utils.data.Dataset):
    """The published pattern: one row at a time, tensors made in __getitem__."""

    def __init__(self, tokens: np.ndarray, target: np.ndarray, shift: float):
        self.tokens, self.target, self.shift = tokens, target, shift

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int):
        x = torch.cat([torch.from_numpy(self.tokens[i, 0]), torch.from_numpy(self.tokens[i, 1])])
        y = torch.tensor(
            min(max(float(self.target[i]) + self.shift, 0.0), 1.0), dtype=torch.float32
        )
        return x, y


def naive_fit(dataset, hp: dict, device: torch.device, seed: int = 0) -> list[float]:
    from usam.mlp import UsamMLP

    torch.manual_seed(seed)
    model = UsamMLP().to(device).train()
    opt = torch.optim.SGD(
        model.parameters(), lr=hp["lr"], momentum=hp["momentum"], weight_decay=0.001
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=hp["batch_size"],
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    seconds = []
    for _ in range(hp["epochs"]):
        start, total = time.perf_counter(), 0.0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--target", default="iou_large")
    parser.add_argument("--dataset", default="davis", help="whose tuned hyperparameters to use")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--steps", nargs="*", default=[], choices=["eager", "compile", "cuda_graph"]
    )
    parser.add_argument("--stack", type=int, default=0)
    parser.add_argument("--smac-trials", type=int, default=0)
    parser.add_argument("--smac-rows", type=int, default=10_000)
    parser.add_argument("--concurrent", type=int, default=1)
    parser.add_argument("--smac-walltime", type=float, default=None)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from usam.schema import TARGETS
    from usam.train import Trainer, paper_hyperparameters

    work = Path(args.dir or tempfile.mkdtemp(prefix="usam-train-bench-"))
    start = time.perf_counter()
    container = build_container(work, args.rows)
    build_s = time.perf_counter() - start
    hp = {**paper_hyperparameters(args.dataset, args.target), "epochs": args.epochs}
    trainer = Trainer(device=args.device, progress=False)
    data = trainer.load(container=container, target=args.target)
    x, y = torch.cat([data.x_train, data.x_val]), torch.cat([data.y_train, data.y_val])

    # warm-up: torch's first optimiser step and first matmuls pay one-off costs (lazy imports)
    trainer.fit(x[:512], y[:512], {**hp, "epochs": 1})
    epochs_fast: list[float] = []
    last = [time.perf_counter()]

    def tick(*_):
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        epochs_fast.append(now - last[0])
        last[0] = now

    trainer.fit(x, y, hp, on_epoch=tick)
    autograd_epochs = list(epochs_fast)  # trainer.step=autograd, the default
    steps = {}
    for step in args.steps:
        t = Trainer(device=args.device, progress=False, step=step)
        t.fit(x[:4096], y[:4096], {**hp, "epochs": 1})  # warm-up (compilation, capture)
        epochs_fast, last[0] = [], time.perf_counter()
        t.fit(x, y, hp, on_epoch=tick)
        steps[step] = float(np.mean(epochs_fast))

    from usam.container import Container

    c = Container.open(container)
    tokens, target = np.ascontiguousarray(c.tokens), np.asarray(c[args.target])
    keep = np.isfinite(target)
    ds = PerSampleDataset(tokens[keep], target[keep], TARGETS[args.target])
    epochs_naive = naive_fit(ds, hp, torch.device(args.device))

    fast = autograd_s = float(np.mean(autograd_epochs))
    naive = float(np.mean(epochs_naive))
    result = {
        "rows": len(x),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "hyperparameters": hp,
        "container_build_s": round(build_s, 1),
        "usam_s_per_epoch": round(fast, 3),
        "per_sample_dataloader_s_per_epoch": round(naive, 3),
        "speedup": round(naive / fast, 2),
        **{
            f"step={k}": {
                "s_per_epoch": round(v, 4),
                "vs_dataloader": round(naive / v, 2),
                "vs_autograd": round(autograd_s / v, 2),
            }
            for k, v in steps.items()
        },
    }
    print(json.dumps(result, indent=1), flush=True)
    if args.stack:
        print(json.dumps(stack_benchmark(trainer, x, y, hp, args.stack), indent=1), flush=True)
    if args.smac_trials:
        print(json.dumps(smac_benchmark(args, hp, work), indent=1), flush=True)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def stack_benchmark(trainer, x, y, hp: dict, k: int) -> dict:
    """K settings (K learning rates) trained in turn vs together (usam.stacked)."""
    from usam.stacked import StackedMLPs

    hps = [{**hp, "lr": hp["lr"] * (0.5 + i / k)} for i in range(k)]
    step = "cuda_graph" if x.device.type == "cuda" else "eager"
    StackedMLPs(hps[:2], in_features=x.shape[1], seed=0, device=x.device).fit(
        x[:2048], y[:2048], step=step
    )  # warm-up
    _sync(x.device)
    start = time.perf_counter()
    for h in hps:
        trainer.fit(x, y, h)
    _sync(x.device)
    in_turn = time.perf_counter() - start
    start = time.perf_counter()
    StackedMLPs(hps, in_features=x.shape[1], seed=0, device=x.device).fit(x, y, step=step)
    _sync(x.device)
    together = time.perf_counter() - start
    return {
        "trials": k,
        "epochs": hp["epochs"],
        "step": step,
        "in_turn_s_per_trial": round(in_turn / k, 3),
        "stacked_s_per_trial": round(together / k, 3),
        "speedup": round(in_turn / together, 2),
    }


def synthetic_rows(n: int, device, seed: int = 0):
    """Low-rank tokens (as real decoder tokens are) and a target learnable from them."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(n, 8, generator=g)
    x = (z @ torch.randn(8, 512, generator=g) / 8**0.5).to(device)
    y = torch.sigmoid(z @ torch.randn(8, generator=g) / 2).to(device)
    return x, y


def smac_benchmark(args, hp: dict, work: Path) -> dict:
    from usam.hpo import SmacHPO
    from usam.train import Data, Objective, Trainer

    x, y = synthetic_rows(args.smac_rows, args.device)
    n_val = args.smac_rows // 5
    data = Data(x[n_val:], y[n_val:], x[:n_val], y[:n_val])
    step = "cuda_graph" if torch.device(args.device).type == "cuda" else "autograd"
    trainer = Trainer(device=args.device, progress=False, step=step)
    start = time.perf_counter()
    _, info = SmacHPO(
        n_trials=args.smac_trials,
        concurrent_trials=args.concurrent,
        walltime_limit=args.smac_walltime,
        progress=True,
    ).search(Objective(trainer, data, hp), hp, out_dir=work / "smac", name=args.target)
    wall = time.perf_counter() - start
    done = info["trials_run"]
    return {
        "smac_trials_asked": args.smac_trials,
        "smac_trials_run": done,
        "rows": args.smac_rows,
        "concurrent_trials": args.concurrent,
        "trainer_step": step,
        "wall_s": round(wall, 1),
        f"extrapolated_s_for_{args.smac_trials}_trials": round(wall * args.smac_trials / done, 1),
        "best_loss": round(info["best_loss"], 5),
        "incumbent": info["incumbent"],
    }


if __name__ == "__main__":
    main()
