"""Stage 3: python -m usam.train predictor=<target> — one USAM MLP per target.

Reads one or more training containers (Stage 2), keeps the original-image rows (unless
`predictor.augmented=true`) with a finite target, shifts gap targets by +0.5 and clips to
[0, 1], splits by group (20% validation) or validates on a separate `val_container`,
optionally searches hyperparameters (the `hpo` group), trains with the chosen ones, reports
validation metrics, then retrains on the training containers' rows (train + validation
split; a separate `val_container` is never trained on) and saves a bundle
`<out_dir>/<target>/` (see usam.mlp) that records the rows of that fit (usam.protocol).

The training data lives on the device as two tensors; an epoch is a seeded random
permutation cut into index batches, so there is no per-sample Python work.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from usam import CONF_DIR
from usam.cli import run_stage, save_run
from usam.container import Container
from usam.errors import UsamError
from usam.mlp import UsamMLP, save_bundle
from usam.options import flag, integer, number, unset
from usam.protocol import container_identity, group_table, split_groups, write_seen
from usam.sam import resolve_device
from usam.schema import TARGETS

log = logging.getLogger(__name__)

SEARCHED = ("batch_size", "epochs", "lr", "momentum")
WITHIN = (0.1, 0.05, 0.01)

# The paper's tuned (batch_size, epochs, lr, momentum) per dataset and target (SPEC.md, Stage 3).
# A target without a row uses its dataset's "default".
_COCO_DEFAULT = (189, 36, 0.0087130695692, 0.1639321491122)
PAPER_DEFAULTS: dict[str, dict[str, tuple[int, int, float, float]]] = {
    "coco": {
        "default": _COCO_DEFAULT,
        "iou_tiny": _COCO_DEFAULT,
        "iou_large": (189, 35, 0.0087130695692, 0.1639321491122),
    },
    "davis": {
        # The paper gives DAVIS no default row (all nine targets have one); a target outside
        # the nine falls back to COCO's default, the paper's most reused setting.
        "default": _COCO_DEFAULT,
        "task_gap": (158, 55, 0.029406075389, 0.7093735218048),
        "iou_base_plus": (130, 70, 0.0016774068549, 0.8908015870842),
        "iou_small": (193, 70, 0.0024243301281, 0.8148493215442),
        "iou_tiny": (151, 63, 0.0702736108729, 0.3075366146863),
        "iou_large": (232, 42, 0.0164839636621, 0.1234703782399),
        "model_gap": (235, 77, 0.0039678611351, 0.1280011787627),
        "iou_dense_prompt": (62, 80, 0.0230261929437, 0.2442788582406),
        "unsupervised_iou": (118, 57, 0.0343696361285, 0.8852591752),
        "prompt_gap": (154, 40, 0.0008989134277, 0.5382621589924),
    },
    "sav": {"default": (193, 9, 0.0087130695692, 0.1639321491122)},
    "ade20k": {
        "default": (106, 79, 0.0013075788956, 0.8303298246553),
        "iou_tiny": (106, 79, 0.0013075788956, 0.8303298246553),
        "task_gap": (208, 75, 0.0411114656149, 0.2459095045924),
        "prompt_gap": (193, 70, 0.0024243301281, 0.8148493215442),
    },
}
# Datasets the paper did not tune for borrow another's table: MOSE is, like DAVIS, a
# video object segmentation dataset with per-object masks; the bundled sample is in DAVIS layout.
DEFAULTS_FROM = {"mose": "davis", "sample": "davis"}


def paper_hyperparameters(dataset: str, target: str) -> dict[str, Any]:
    """The paper's tuned values for (dataset, target); unknown datasets get COCO's default."""
    key = DEFAULTS_FROM.get(dataset, dataset)
    if key not in PAPER_DEFAULTS:
        log.warning("no tuned hyperparameters for dataset %r; using COCO's default", dataset)
        key = "coco"
    table = PAPER_DEFAULTS[key]
    batch_size, epochs, lr, momentum = table.get(target, table["default"])
    return {"batch_size": batch_size, "epochs": epochs, "lr": lr, "momentum": momentum}


def regression_metrics(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """MSE, L1, R^2 and the share of predictions within 0.1 / 0.05 / 0.01 of the target."""
    pred, y = pred.double(), y.double()
    err = pred - y
    sse = float((err**2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    out = {
        "mse": float((err**2).mean()),
        "l1": float(err.abs().mean()),
        "r2": 1.0 - sse / sst if sst > 0 else float("nan"),  # undefined for a constant target
    }
    for t in WITHIN:
        out[f"within_{t}"] = float((err.abs() <= t).double().mean())
    return out


@dataclass
class Data:
    """Training and validation rows on the device: x [N, 512] float32, y [N] in [0, 1]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)  # container meta of the training data
    rows: dict[str, int] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # which rows the final fit uses
    seen: dict[str, list[str]] = field(default_factory=dict)  # {dataset: groups} of those rows


def container_paths(value: Any) -> list[str]:
    """`container=<dir>` or `container=[<dir>, ...]` -> a list of paths."""
    if isinstance(value, (str, Path)) or unset(value):
        return [value]
    paths = [str(v) for v in value]
    if not paths:
        raise UsamError("container=[] names no container; give one or more directories")
    return paths


def merged_meta(parts: Sequence[Any]) -> dict[str, Any]:
    """One meta for pooled containers: datasets, SAM versions and models of all, random if any is."""
    if len(parts) == 1:
        return dict(parts[0].meta)

    def union(key: str) -> list[str]:
        return list(dict.fromkeys(x for p in parts for x in p.meta.get(key) or []))

    return {
        **parts[0].meta,
        "datasets": union("datasets"),
        "sam_versions": union("sam_versions"),
        "models": union("models"),
        "random_weights": any(bool(p.meta.get("random_weights")) for p in parts),
    }


def target_rows(c, target: str, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens [n, 512], shifted and clipped targets [n], rows dropped for a NaN target)."""
    y = np.asarray(c[target])  # float64 columns (usam/container/writer.py)
    check_finite_rows(c, np.isinf(y), f"{target} is infinite", where)
    keep = np.isfinite(y)
    dropped = int((~keep).sum())
    if dropped:
        log.info(
            "%s: %d of %d rows have no %s (NaN) and are dropped", where, dropped, len(y), target
        )
    idx = np.flatnonzero(keep)
    tokens = np.asarray(c.tokens[idx] if dropped else c.tokens)  # float32 in the container
    # a NaN or inf makes the sum non-finite (an overflow too: then the rows are looked at)
    if not np.isfinite(tokens.sum()):
        bad = np.zeros_like(keep)
        bad[idx[~np.isfinite(tokens).all(axis=(1, 2))]] = True
        check_finite_rows(c, bad, "tokens hold NaN or inf", where)
    y = np.clip(y[idx] + TARGETS[target], 0.0, 1.0).astype(np.float32)
    return tokens.reshape(len(idx), tokens.shape[1] * tokens.shape[2]), y, dropped


def check_finite_rows(c, bad: np.ndarray, what: str, where: str) -> None:
    """Stop on rows no training may see (they would turn the loss and every weight into NaN)."""
    if not bad.any():
        return
    first = int(np.flatnonzero(bad)[0])
    raise UsamError(
        f"{where}: {int(bad.sum())} of {len(bad)} rows: {what} (first: image "
        f"{c.names[first]!r}, model {c.models[first]}); the container is damaged, rebuild it "
        "with python -m usam.container from intact records"
    )


class Diverged(UsamError):
    """The training loss became NaN or infinite (a learning rate far too high)."""


def check_finite_model(model: UsamMLP, where: str) -> None:
    """A model with a NaN or infinite weight predicts NaN: never save one."""
    bad = [n for n, t in model.state_dict().items() if not torch.isfinite(t).all()]
    if bad:
        raise Diverged(f"{where}: weights {bad} are NaN or infinite; no bundle written")


def check_hyperparameters(p: dict[str, Any], key: str = "predictor") -> dict[str, Any]:
    """Every training option in its type and range, or one UsamError naming the key.

    `None` (= the paper's tuned value) passes for the searched ones. Returns the values
    converted (batch_size and epochs as int, the rest float, hidden as a list of int).
    """
    out = dict(p)
    checks = {
        "batch_size": lambda v, k: integer(v, k, low=1),
        "epochs": lambda v, k: integer(v, k, low=1),
        "lr": lambda v, k: number(v, k, low=0.0, low_open=True),
        "momentum": lambda v, k: number(v, k, low=0.0, high=1.0, high_open=True),
        "weight_decay": lambda v, k: number(v, k, low=0.0),
    }
    for name, check in checks.items():
        if out.get(name) is not None:
            out[name] = check(out[name], f"{key}.{name}")
    if "hidden" in out:
        out["hidden"] = check_hidden(out["hidden"], f"{key}.hidden")
    if "augmented" in out:
        out["augmented"] = flag(out["augmented"], f"{key}.augmented")
    return out


def check_out_dir(out_dir: Path, target: Any) -> None:
    """The bundle folder must be creatable: fail now, not after the training."""
    for path in (out_dir, out_dir / str(target)):
        if path.exists() and not path.is_dir():
            raise UsamError(f"out_dir: {path} exists and is not a folder; choose another out_dir")


MAX_WIDTH, MAX_PARAMETERS = 65_536, 100_000_000


def check_hidden(hidden: Any, key: str, in_features: int = 512) -> list[int]:
    """Hidden layer widths: at least one layer, each >= 1; a zero width is a constant model."""
    if isinstance(hidden, (str, bytes, int, float)) or not hasattr(hidden, "__iter__"):
        raise UsamError(f"{key} must be a list of layer widths such as [512, 512], got {hidden!r}")
    widths = [integer(h, f"{key}[{i}]", low=1, high=MAX_WIDTH) for i, h in enumerate(hidden)]
    if not widths:
        raise UsamError(f"{key} must name at least one hidden layer, e.g. [512, 512]")
    sizes = [in_features, *widths, 1]
    params = sum((a + 1) * b for a, b in zip(sizes, sizes[1:], strict=False))
    if params > MAX_PARAMETERS:
        raise UsamError(
            f"{key}={widths}: {params:,} parameters, more than the {MAX_PARAMETERS:,} allowed"
        )
    return widths


class Objective:
    """Validation loss of a hyperparameter setting: what the HPO runner minimises.

    Picklable (trainer + tensors), so Dask workers can run trials.
    """

    def __init__(self, trainer: Trainer, data: Data, base: dict[str, Any]):
        self.trainer, self.data, self.base = trainer, data, base

    def __call__(self, hp: dict[str, Any]) -> float:
        hp = {**self.base, **hp}
        try:
            model, _ = self.trainer.fit(self.data.x_train, self.data.y_train, hp)
        except Diverged:
            return 1.0
        loss = self.trainer.evaluate(model, self.data.x_val, self.data.y_val)["mse"]
        return (
            loss if math.isfinite(loss) else 1.0
        )  # a diverged run: the worst MSE a sigmoid can reach

    def many(self, hps: list[dict[str, Any]]) -> list[float]:
        """The losses of several settings trained together on one device (usam.stacked);
        equal to calling this objective on each, up to float rounding."""
        from usam.stacked import stacked_losses

        step = "eager" if self.trainer.step == "autograd" else self.trainer.step
        return stacked_losses(self.trainer, self.data, [{**self.base, **hp} for hp in hps], step)


class Trainer:
    """Fits one estimator: load and check data, search (via `hpo`), fit, evaluate, refit, save."""

    def __init__(
        self,
        *,
        device: str = "auto",
        seed: int = 0,
        val_fraction: float = 0.2,
        refit_all: bool = True,
        eval_batch_size: int = 8192,
        progress: bool = True,
        step: str = "autograd",
    ):
        if step not in ("autograd", "eager", "compile", "cuda_graph"):
            raise UsamError(f"trainer.step={step!r}: choose autograd, eager, compile or cuda_graph")
        self.step = step  # autograd: torch.optim; the others: usam.stacked's step (K = 1)
        val_fraction = number(
            val_fraction, "trainer.val_fraction", low=0, high=1, low_open=True, high_open=True
        )
        self.device = resolve_device(str(device), key="device")
        self.seed, self.val_fraction = integer(seed, "trainer.seed", low=0), val_fraction
        self.refit_all, self.eval_batch_size, self.progress = (
            flag(refit_all, "trainer.refit_all"),
            integer(eval_batch_size, "trainer.eval_batch_size", low=1),
            flag(progress, "trainer.progress"),
        )

    # -- data ------------------------------------------------------------------------------
    def load(
        self,
        *,
        container: str | Path | Sequence[str | Path],
        target: str,
        val_container: str | Path | None = None,
        filter_model: str | None = None,
        augmented: bool = False,
    ) -> Data:
        """Open, filter and split; every bad-input case fails here, before any training.

        `container` may be a list (e.g. one container per SA-V shard): their rows are pooled
        and split by group together. `augmented=False` keeps original-image rows (the paper).
        """
        if target not in TARGETS:
            raise UsamError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        paths = container_paths(container)
        trains = [Container.open(p, what="container") for p in paths]
        val = None if unset(val_container) else Container.open(val_container, what="val_container")
        for path, part in [*zip(paths, trains, strict=True), (val_container, val)]:
            if part is None:
                continue
            if target not in part.columns:
                raise UsamError(
                    f"{path}: no column {target!r} in this container "
                    f"(it has: {', '.join(sorted(part.columns))}); rebuild it with python -m usam.container"
                )
            models = list(part.meta.get("models", []))
            if filter_model not in (None, "") and filter_model not in models:
                raise UsamError(
                    f"{path}: predictor.filter_model={filter_model!r} but the container holds "
                    f"models {models}"
                )
            if part.meta["token_dim"] != trains[0].meta["token_dim"]:
                raise UsamError(
                    f"{path}: tokens of {part.meta['token_dim']} floats, but {paths[0]} has "
                    f"{trains[0].meta['token_dim']}; train on containers of one kind"
                )
        if augmented and not any(len(c.filter(augmented=True)) for c in trains):
            raise UsamError(
                f"predictor.augmented=true but {', '.join(map(str, paths))} holds no image-variant "
                "rows (extracted with augment=none or built with augmented=false)"
            )
        filters = {"model": filter_model or None, "augmented": None if augmented else False}
        trains = [c.filter(**filters) for c in trains]
        if sum(len(c) for c in trains) == 0:
            raise UsamError(
                f"{', '.join(map(str, paths))}: no rows left after filtering ({filters}); relax the filter"
            )
        if val is None:
            pairs = split_groups(trains, self.val_fraction, self.seed)
            parts = {"train": [a for a, _ in pairs], "val": [b for _, b in pairs]}
            where = {"train": paths, "val": paths}
        else:
            parts = {"train": trains, "val": [val.filter(**filters)]}
            where = {"train": paths, "val": [val_container]}
        arrays, rows = {}, {}
        for name, views in parts.items():
            xs, ys, dropped = [], [], 0
            for path, view in zip(where[name], views, strict=True):
                x, y, d = target_rows(view, target, f"{path} ({name})")
                xs.append(x)
                ys.append(y)
                dropped += d
            y = np.concatenate(ys)
            if len(y) == 0:
                raise UsamError(
                    f"{', '.join(map(str, where[name]))}: the {name} split is empty after filtering "
                    f"{filters} and dropping {dropped} rows without {target}; use more data, fewer "
                    "filters, or a val_container"
                )
            arrays[name] = (
                torch.from_numpy(np.concatenate(xs)).to(self.device),
                torch.from_numpy(y).to(self.device),
            )
            rows[name], rows[f"{name}_dropped_nan"] = len(y), dropped
        log.info("%s: %d training rows, %d validation rows", target, rows["train"], rows["val"])
        # what the final fit sees: never a separate val_container (SPEC, Stage 3)
        if val is not None:
            fit, fitted = "all", trains
        elif self.refit_all:
            fit, fitted = "train+val", trains
        else:
            fit, fitted = "train", parts["train"]
        record = {
            "containers": [container_identity(c) for c in trains],
            "val_container": None if val is None else container_identity(val),
            "filters": {"model": filters["model"], "augmented": bool(augmented)},
            "split": None
            if val is not None
            else {"by": "group", "val_fraction": self.val_fraction, "seed": self.seed},
            "fit": fit,
        }
        return Data(
            *arrays["train"],
            *arrays["val"],
            meta=merged_meta(trains),
            rows=rows,
            record=record,
            seen=group_table(fitted),
        )

    # -- training --------------------------------------------------------------------------
    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        hp: dict[str, Any],
        *,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
        on_epoch: Callable[[int, float, float | None], None] | None = None,
        desc: str | None = None,
    ) -> tuple[UsamMLP, list[float]]:
        """Train a fresh MLP; same seed and device give the same weights. Returns (model, train losses)."""
        if self.step != "autograd":
            from usam.stacked import fit_one

            return fit_one(self, x, y, hp, val=val, on_epoch=on_epoch)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(self.seed)
            model = UsamMLP(in_features=x.shape[1], hidden=hp.get("hidden", (512, 512)))
        model.to(x.device).train()
        opt = torch.optim.SGD(
            model.parameters(),
            lr=float(hp["lr"]),
            momentum=float(hp["momentum"]),
            weight_decay=float(hp.get("weight_decay", 0.001)),
        )
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        n, bs, losses = len(x), int(hp["batch_size"]), []
        bar = tqdm(
            range(int(hp["epochs"])), desc=desc, unit="epoch", disable=not (self.progress and desc)
        )
        for epoch in bar:
            total = torch.zeros((), device=x.device)
            for idx in torch.randperm(n, generator=gen, device=x.device).split(bs):
                loss = F.mse_loss(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(idx)
            losses.append(float(total) / n)  # one sync per epoch, not per batch
            if not math.isfinite(losses[-1]):
                raise Diverged(
                    f"{desc or 'training'}: the loss became {losses[-1]} in epoch {epoch + 1} "
                    f"(lr={hp['lr']}, momentum={hp['momentum']}, batch_size={bs}); lower predictor.lr"
                )
            val_loss = self.evaluate(model, *val)["mse"] if val is not None else None
            if on_epoch is not None:
                on_epoch(epoch, losses[-1], val_loss)
            bar.set_postfix(
                loss=f"{losses[-1]:.4f}",
                **({"val": f"{val_loss:.4f}"} if val_loss is not None else {}),
            )
            model.train()
        return model.eval(), losses

    @torch.no_grad()
    def evaluate(self, model: UsamMLP, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        model.eval()
        pred = torch.cat([model(xb) for xb in x.split(self.eval_batch_size)])
        return regression_metrics(pred, y)

    # -- the stage -------------------------------------------------------------------------
    def run(
        self,
        *,
        predictor: dict[str, Any] | DictConfig,
        hpo,
        container: str | Path,
        out_dir: str | Path,
        run_dir: str | Path,
        val_container: str | Path | None = None,
        dataset: str | None = None,
    ) -> dict[str, Any]:
        """Everything for one target; returns the summary (the stage writes it to summary.json)."""
        from torch.utils.tensorboard import SummaryWriter

        start = time.time()
        p = (
            OmegaConf.to_container(predictor, resolve=True)
            if isinstance(predictor, DictConfig)
            else dict(predictor)
        )
        if "no_augmented" in p:
            raise UsamError(
                "predictor.no_augmented is gone: original-image rows are the default now; "
                "set predictor.augmented=true to train on the image-variant rows too"
            )
        p = check_hyperparameters(p)  # before the container is read
        check_out_dir(Path(out_dir), p.get("target"))
        target = p.get("target")
        data = self.load(
            container=container,
            target=target,
            val_container=val_container,
            filter_model=p.get("filter_model"),
            augmented=bool(p.get("augmented", False)),
        )
        hp = self.hyperparameters(p, data.meta, dataset)
        run_dir, out_dir = Path(run_dir), Path(out_dir)
        writer = SummaryWriter(log_dir=str(run_dir / "tb" / target))
        try:
            hp, hpo_info = hpo.search(
                Objective(self, data, hp),
                hp,
                out_dir=run_dir / "hpo",
                name=target,
                writer=writer,
                seed=self.seed,
            )
            log.info("%s: training with %s", target, {k: hp[k] for k in SEARCHED})

            def on_epoch(epoch: int, train_loss: float, val_loss: float | None) -> None:
                writer.add_scalar("loss/train", train_loss, epoch)
                writer.add_scalar("loss/val", val_loss, epoch)

            model, _ = self.fit(
                data.x_train,
                data.y_train,
                hp,
                val=(data.x_val, data.y_val),
                on_epoch=on_epoch,
                desc=f"{target} (train split)",
            )
            metrics = self.evaluate(model, data.x_val, data.y_val)
            for k, v in metrics.items():
                writer.add_scalar(f"val/{k}", v, 0)
            log.info(
                "%s validation: %s", target, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            )
            if data.record["fit"] == "train+val":  # never with a val_container: see load()
                x = torch.cat([data.x_train, data.x_val])
                y = torch.cat([data.y_train, data.y_val])
                model, _ = self.fit(
                    x,
                    y,
                    hp,
                    desc=f"{target} (all rows)",
                    on_epoch=lambda e, loss, _: writer.add_scalar("loss/refit", loss, e),
                )
        finally:
            writer.close()
        check_finite_model(model, f"estimator {target}")
        bundle = out_dir / target
        meta = data.meta
        paths = container_paths(container)
        config = {
            "target": target,
            "output_shift": TARGETS[target],
            "dataset": "+".join(meta.get("datasets") or []) or dataset,
            "sam_version": "+".join(meta.get("sam_versions") or []) or None,
            "models": meta.get("models"),
            "random_weights": bool(meta.get("random_weights", False)),
            "container": str(paths[0]) if len(paths) == 1 else [str(c) for c in paths],
            "val_container": None if unset(val_container) else str(val_container),
            "filter_model": p.get("filter_model"),
            "augmented": bool(p.get("augmented", False)),
            "hyperparameters": hp,
            "hpo": hpo_info,
            "rows": data.rows,
            "trained_on": "train+val" if data.record["fit"] == "train+val" else "train",
            # the rows of the final fit, for the leak check of python -m usam.evaluate
            "data": {**data.record, **write_seen(bundle, data.seen)},
            "seed": self.seed,
            "val_metrics": metrics,  # of the same settings trained on the training split only
        }
        save_bundle(bundle, model, config)
        if config["random_weights"]:
            log.warning(
                "%s: the container came from random SAM weights; this estimator is for testing only",
                target,
            )
        summary = {
            **{
                k: config[k]
                for k in (
                    "target",
                    "dataset",
                    "container",
                    "val_container",
                    "rows",
                    "hyperparameters",
                    "hpo",
                    "random_weights",
                )
            },
            "fit": data.record["fit"],
            "bundle": str(bundle),
            "device": str(self.device),
            "val_metrics": metrics,
            "val_loss": metrics["mse"],
            "seconds": round(time.time() - start, 3),
        }
        log.info("%s: bundle written to %s", target, bundle)
        return summary

    def hyperparameters(
        self, p: dict[str, Any], meta: dict[str, Any], dataset: str | None
    ) -> dict[str, Any]:
        """Paper defaults for the container's dataset, overridden by every non-null `predictor` value."""
        held = list(meta.get("datasets") or [])
        name = held[0] if len(held) == 1 else (dataset or "unknown")
        if dataset and len(held) == 1 and held[0] != dataset:
            log.warning(
                "dataset=%s but the container holds %s; using %s's tuned defaults",
                dataset,
                held[0],
                held[0],
            )
        defaults = paper_hyperparameters(str(name), p["target"])
        hp = {k: (defaults[k] if p.get(k) is None else p[k]) for k in SEARCHED}
        hp["weight_decay"] = p.get("weight_decay", 0.001)
        hp["hidden"] = p.get("hidden", (512, 512))
        return check_hyperparameters(hp)


def run(cfg: DictConfig) -> dict[str, Any]:
    trainer = instantiate(cfg.trainer)
    hpo = instantiate(cfg.hpo)
    summary = trainer.run(
        predictor=cfg.predictor,
        hpo=hpo,
        container=cfg.container,
        val_container=cfg.val_container,
        out_dir=cfg.out_dir,
        run_dir=cfg.paths.output_dir,
        dataset=cfg.dataset.name,
    )
    return save_run(cfg, summary)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the validation loss so Hydra sweepers (e.g. Optuna) can minimise it."""
    return run_stage(run, cfg)["val_loss"]


if __name__ == "__main__":
    main()
