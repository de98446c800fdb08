"""Stage 3 speed: usam's trainer vs a per-sample Dataset + DataLoader loop, same hyperparameters.

    python benchmarks/train.py [--rows 100000] [--epochs 2] [--target iou_large] [--dataset davis]
                               [--threads N] [--device cpu] [--smac-trials 20 --smac-rows 10000]

Builds a synthetic container (random tokens, through the real record -> container path),
then trains one target for `--epochs` epochs with
  - usam.train.Trainer.fit: tensors on the device once, seeded randperm index batches;
  - the published approach: a torch Dataset whose __getitem__ builds one sample
    (concatenate the two tokens, shift and clip the target), a shuffling DataLoader
    that collates it into batches, and `loss.item()` per batch,
and prints seconds per epoch for both and the ratio. Both do the same optimiser steps on
the same rows; neither validates per epoch. With --smac-trials it also times a SMAC search
(usam.hpo.SmacHPO) on the first --smac-rows rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from usam.schema import SIZES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from records import make_record, write_record  # noqa: E402

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
    for k in range(images):
        rec, tens = recs[k % templates]
        rec = {
            **rec,
            "name": f"JPEGImages/v{k // 10:05d}/{k % 10:05d}.jpg",
            "group": f"v{k // 10:05d}",
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
    parser.add_argument("--smac-trials", type=int, default=0)
    parser.add_argument("--smac-rows", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from usam.schema import TARGETS
    from usam.train import Objective, Trainer, paper_hyperparameters

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

    from usam.containers import Container

    c = Container.open(container)
    tokens, target = np.ascontiguousarray(c.tokens), np.asarray(c[args.target])
    keep = np.isfinite(target)
    ds = PerSampleDataset(tokens[keep], target[keep], TARGETS[args.target])
    epochs_naive = naive_fit(ds, hp, torch.device(args.device))

    fast, naive = float(np.mean(epochs_fast)), float(np.mean(epochs_naive))
    result = {
        "rows": len(x),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "hyperparameters": hp,
        "container_build_s": round(build_s, 1),
        "usam_s_per_epoch": round(fast, 3),
        "per_sample_dataloader_s_per_epoch": round(naive, 3),
        "speedup": round(naive / fast, 2),
    }
    print(json.dumps(result, indent=1), flush=True)
    if args.smac_trials:
        from usam.hpo import SmacHPO
        from usam.train import Data

        k = args.smac_rows
        n_val = max(1, round(k * len(data.y_val) / len(y)))
        small = Data(
            data.x_train[: k - n_val],
            data.y_train[: k - n_val],
            data.x_val[:n_val],
            data.y_val[:n_val],
        )
        start = time.perf_counter()
        _, info = SmacHPO(n_trials=args.smac_trials, progress=True).search(
            Objective(trainer, small, hp), hp, out_dir=work / "smac", name=args.target
        )
        smac = {
            "smac_trials": info["trials_run"],
            "rows": k,
            "wall_s": round(time.perf_counter() - start, 1),
            "best_loss": round(info["best_loss"], 5),
            "incumbent": info["incumbent"],
        }
        print(json.dumps(smac, indent=1))


if __name__ == "__main__":
    main()
