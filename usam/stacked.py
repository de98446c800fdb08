"""Several USAM MLPs trained at once on one device: SMAC trials side by side.

A GPU runs one 512-512-512-1 MLP step in a few microseconds of arithmetic and tens of
microseconds of kernel launches, so one trial at a time leaves it idle. `StackedMLPs` holds K
MLPs as stacked weights [K, out, in] and trains them with batched matmuls, each with its own
lr, momentum, weight decay, batch size and epochs, doing what `Trainer.fit` does for each:
the same seeded initialisation, the same seeded permutation per epoch cut into batches of
its own size (the last one shorter), MSE, SGD with momentum (torch.optim.SGD's update rule).
Results equal one-by-one training up to float rounding (tests/test_stacked.py).

How the trials share a step: step t of trial k is batch t mod nb_k of its epoch t div nb_k
(nb_k = its batches per epoch), padded to the largest batch size in the stack with zero
weights. Trials finish at different steps (the largest batches first); each time one
finishes, the stack is rebuilt without it, so no step computes finished trials and the
padding shrinks. The index arithmetic runs on the device from a step counter on the device,
and the backward pass is written out (no autograd), so a step has fixed shapes and no host
sync: `step="compile"` hands it to torch.compile, `step="cuda_graph"` captures it as a CUDA
graph (once per stack shape) and replays it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from usam.errors import UsamError
from usam.mlp import UsamMLP

log = logging.getLogger(__name__)

STEPS = ("eager", "compile", "cuda_graph")


def _init_like_fit(seed: int, in_features: int, hidden: Sequence[int]) -> UsamMLP:
    with torch.random.fork_rng(devices=[]):  # as Trainer.fit: seeded, caller's RNG untouched
        torch.manual_seed(seed)
        return UsamMLP(in_features=in_features, hidden=hidden)


class StackedMLPs:
    """K MLPs of one architecture, trained together on one (x, y); see the module docstring."""

    def __init__(
        self,
        hps: Sequence[dict[str, Any]],
        *,
        in_features: int,
        seed: int,
        device: torch.device | str,
    ):
        if not hps:
            raise UsamError("no hyperparameter settings to train")
        hidden = {tuple(int(h) for h in hp.get("hidden", (512, 512))) for hp in hps}
        if len(hidden) != 1:
            raise UsamError(f"stacked trials need one architecture, got hidden sizes {hidden}")
        self.hidden = list(next(iter(hidden)))
        self.hps, self.k, self.seed = list(hps), len(hps), int(seed)
        self.device = torch.device(device)
        model = _init_like_fit(self.seed, in_features, self.hidden)
        linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
        # every trial starts from the same seeded weights, as each would in Trainer.fit
        self.weights = [
            lin.weight.detach().to(self.device).expand(self.k, -1, -1).clone() for lin in linears
        ]
        self.biases = [
            lin.bias.detach().to(self.device).expand(self.k, -1).clone() for lin in linears
        ]
        self.in_features = int(in_features)

        def col(key: str, default: float | None = None) -> torch.Tensor:
            vals = [float(hp.get(key, default)) for hp in hps]
            return torch.tensor(vals, dtype=torch.float32, device=self.device)

        self.lr, self.momentum = col("lr"), col("momentum")
        self.weight_decay = col("weight_decay", 0.001)
        self.batch_size = [int(hp["batch_size"]) for hp in hps]
        self.epochs = [int(hp["epochs"]) for hp in hps]
        if min(self.batch_size) < 1 or min(self.epochs) < 1:
            raise UsamError(f"batch_size and epochs must be >= 1, got {hps}")

    # -- the model -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [K, B, in] -> [K, B] predictions in (0, 1), each slice through its own MLP."""
        a = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            a = torch.baddbmm(b[:, None, :], a, w.transpose(1, 2))
            if i < len(self.weights) - 1:
                a = torch.relu(a)
        return torch.sigmoid(a).squeeze(-1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """x [N, in] (shared by all K) -> [K, N]."""
        chunk = max(1, chunk // self.k)
        return torch.cat([self.forward(xb.expand(self.k, -1, -1)) for xb in x.split(chunk)], dim=1)

    def unstack(self, i: int) -> UsamMLP:
        """Trial i as a plain UsamMLP (eval mode, on the device)."""
        model = UsamMLP(in_features=self.in_features, hidden=self.hidden).to(self.device)
        linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[i])
                lin.bias.copy_(b[i])
        return model.eval()

    # -- training --------------------------------------------------------------------------
    @torch.no_grad()
    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        step: str = "eager",
        on_epoch: Callable[[int, torch.Tensor], None] | None = None,
    ) -> None:
        """Train all K on (x [N, in], y [N]). With K = 1, `on_epoch(e, mean_loss [1])` is called
        after each epoch (what Trainer.fit reports)."""
        if step not in STEPS:
            raise UsamError(f"trainer.step={step!r}: choose one of {', '.join(STEPS)}")
        if step == "cuda_graph" and self.device.type != "cuda":
            raise UsamError("trainer.step=cuda_graph needs a CUDA device; use eager or compile")
        n, dev = len(x), self.device
        nb = [math.ceil(n / bs) for bs in self.batch_size]
        steps = [e * b for e, b in zip(self.epochs, nb, strict=True)]
        # the permutations of every epoch any trial reaches, drawn in order from one generator
        # seeded as Trainer.fit seeds its own: perm e is every trial's epoch-e order
        gen = torch.Generator(device=dev).manual_seed(self.seed)
        dtype = torch.int32 if n < 2**31 else torch.int64
        self._perms = torch.stack(
            [
                torch.randperm(n, generator=gen, device=dev).to(dtype)
                for _ in range(max(self.epochs))
            ]
        )
        self._x, self._y, self._n = x, y, n
        self._t = torch.zeros((), dtype=torch.int64, device=dev)  # steps done, on the device
        bufs = [torch.zeros_like(p) for p in self.weights + self.biases]
        epoch_end = {nb[0] * (e + 1): e for e in range(self.epochs[0])}
        report = on_epoch is not None and self.k == 1
        compiled = torch.compile(self._step) if step == "compile" else None
        # Trials stop at different steps (the largest batches first). Each time one stops the
        # stack is rebuilt without it, so no step computes finished trials and the padded
        # batch shrinks to the largest batch still training; a new shape, a new capture.
        alive, t = list(range(self.k)), 0
        while alive:
            stop = min(steps[i] for i in alive)
            self._enter(alive, bufs, nb, steps)
            replay, warm = None, 0
            while t < stop:
                if t == 0:  # torch.optim.SGD's first step starts the momentum buffer
                    self._step_impl(first=True)
                elif compiled is not None:
                    compiled()
                elif step == "cuda_graph" and (t <= 3 or warm < 1):
                    # real steps on a side stream before capturing a new shape (cuBLAS and the
                    # allocator set up outside the capture), as torch.cuda.graph asks
                    self._side_step()
                    warm += 1
                elif step == "cuda_graph":
                    replay = replay or self._capture()
                    replay()
                else:
                    self._step()
                t += 1
                if report and t in epoch_end:
                    on_epoch(epoch_end[t], self._loss / n)
                    self._loss.zero_()
            self._leave(alive, bufs)
            alive = [i for i in alive if steps[i] > stop]

    def _enter(self, alive: list[int], bufs: list[torch.Tensor], nb, steps) -> None:
        """The state of the trials still training, as the tensors the step works on."""
        dev = self.device
        idx = torch.tensor(alive, device=dev)
        self._w = [w.index_select(0, idx) for w in self.weights]
        self._b = [b.index_select(0, idx) for b in self.biases]
        self._bufs = [b.index_select(0, idx) for b in bufs]
        self._lr, self._mom = self.lr[idx], self.momentum[idx]
        self._wd = self.weight_decay[idx]
        as_long = dict(dtype=torch.int64, device=dev)
        self._nb = torch.tensor([nb[i] for i in alive], **as_long)
        self._bs = torch.tensor([self.batch_size[i] for i in alive], **as_long)
        self._steps = torch.tensor([steps[i] for i in alive], **as_long)
        self._ar = torch.arange(max(self.batch_size[i] for i in alive), **as_long)
        self._loss = torch.zeros(len(alive), device=dev)  # sum of row losses this epoch

    def _leave(self, alive: list[int], bufs: list[torch.Tensor]) -> None:
        idx = torch.tensor(alive, device=self.device)
        for full, part in zip(
            self.weights + self.biases + bufs, self._w + self._b + self._bufs, strict=True
        ):
            full.index_copy_(0, idx, part)

    def _step(self) -> None:
        self._step_impl(first=False)

    def _side_step(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step_impl(first=False)
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # recorded, not run: replay() runs it
            self._step_impl(first=False)
        return graph.replay

    def _step_impl(self, first: bool) -> None:
        t, n = self._t, self._n
        epoch = torch.div(t, self._nb, rounding_mode="floor")  # [K]
        start = (t - epoch * self._nb) * self._bs
        end = torch.clamp(start + self._bs, max=n)
        active = t < self._steps
        pos = start[:, None] + self._ar  # [K, B]
        valid = (pos < end[:, None]) & active[:, None]
        w = valid.float() / (end - start).clamp(min=1)[:, None].float()  # mean over the batch
        epoch = epoch.clamp(max=self._perms.shape[0] - 1)
        idx = self._perms[epoch[:, None], pos.clamp(max=n - 1)].long()
        xb, yb = self._x[idx], self._y[idx]  # [K, B, in], [K, B]
        # forward, keeping what the backward pass needs
        acts, a = [xb], xb
        last = len(self._w) - 1
        for i, (wt, b) in enumerate(zip(self._w, self._b, strict=True)):
            a = torch.baddbmm(b[:, None, :], a, wt.transpose(1, 2))
            if i < last:
                a = torch.relu(a)
                acts.append(a)
        p = torch.sigmoid(a.squeeze(-1))
        err = p - yb
        self._loss += (w * err * err).sum(1) * (end - start).float()
        # backward of sum_b w_b (p_b - y_b)^2 through sigmoid, the linears and the ReLUs
        g = (2.0 * w * err * p * (1.0 - p))[..., None]  # [K, B, 1]: d loss / d pre-sigmoid
        grads_w, grads_b = [None] * len(self._w), [None] * len(self._w)
        for i in range(last, -1, -1):
            grads_w[i] = torch.bmm(g.transpose(1, 2), acts[i])
            grads_b[i] = g.sum(1)
            if i > 0:
                g = torch.bmm(g, self._w[i]) * (acts[i] > 0)
        # torch.optim.SGD (dampening 0, no Nesterov); `active` guards the update, although the
        # stack is rebuilt whenever a trial finishes
        for p_, g_, buf in zip(self._w + self._b, grads_w + grads_b, self._bufs, strict=True):
            shape = (len(self._lr),) + (1,) * (p_.ndim - 1)
            d = g_ + self._wd.view(shape) * p_
            new_buf = d if first else self._mom.view(shape) * buf + d
            new_p = p_ - self._lr.view(shape) * new_buf
            on_ = active.view(shape)
            buf.copy_(torch.where(on_, new_buf, buf))
            p_.copy_(torch.where(on_, new_p, p_))
        t += 1


def stacked_losses(
    trainer, data, hps: Sequence[dict[str, Any]], step: str = "eager"
) -> list[float]:
    """Validation MSE of each setting, trained together; what `Objective` gives one by one
    (a diverged run counts as 1.0, the worst MSE a sigmoid can reach)."""
    from usam.train import regression_metrics

    out: list[float | None] = [None] * len(hps)
    # one stack per architecture (hidden sizes are not searched, so usually one)
    groups: dict[tuple, list[int]] = {}
    for i, hp in enumerate(hps):
        groups.setdefault(tuple(int(h) for h in hp.get("hidden", (512, 512))), []).append(i)
    for members in groups.values():
        stack = StackedMLPs(
            [hps[i] for i in members],
            in_features=data.x_train.shape[1],
            seed=trainer.seed,
            device=data.x_train.device,
        )
        stack.fit(data.x_train, data.y_train, step=step)
        pred = stack.predict(data.x_val, trainer.eval_batch_size)
        for j, i in enumerate(members):
            loss = regression_metrics(pred[j], data.y_val)["mse"]
            out[i] = loss if math.isfinite(loss) else 1.0
    return [float(v) for v in out]


def fit_one(trainer, x, y, hp, *, val=None, on_epoch=None) -> tuple[UsamMLP, list[float]]:
    """`Trainer.fit` through the stacked step (K = 1): trainer.step = eager, compile or cuda_graph."""
    stack = StackedMLPs([hp], in_features=x.shape[1], seed=trainer.seed, device=x.device)
    losses: list[float] = []

    def epoch_done(epoch: int, mean: torch.Tensor) -> None:
        losses.append(float(mean[0]))  # one sync per epoch
        val_loss = trainer.evaluate(stack.unstack(0), *val)["mse"] if val is not None else None
        if on_epoch is not None:
            on_epoch(epoch, losses[-1], val_loss)

    stack.fit(x, y, step=trainer.step, on_epoch=epoch_done)
    return stack.unstack(0), losses
