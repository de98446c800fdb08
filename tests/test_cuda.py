"""The CUDA paths (bf16 autocast in SAM 2, tensors on the GPU in training). Skipped without a GPU;
`benchmarks/gpu_checks.sh` runs them in a GPU session.

Random weights make SAM's masks meaningless, but the same random model must give nearly the
same answers on both devices: bf16 autocast only rounds. The checks are on aggregates, which
a few pixels flipping at logit 0 cannot move.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usam.augment import Augmentations
from usam.datasets.sample import SampleDataset
from usam.extract import Extractor, RecordWriter
from usam.sam import SamModels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TINY = {
    "version": "sam2.1",
    "sizes": ["tiny"],
    "checkpoint_dir": "unused",
    "checkpoints": {},
    "configs": {"tiny": "configs/sam2.1/sam2.1_hiera_t.yaml"},
    "urls": {},
    "sha256": {},
    "random_weights": True,
    "seed": 0,
    "image_size": 256,
}


def extract(device: str, compile_decoder: bool = False) -> tuple[dict, dict]:
    models = SamModels(**TINY, device=device, compile_decoder=compile_decoder)
    ex = Extractor(
        models=models,
        augment=Augmentations(),
        writer=RecordWriter(root="unused", dataset="s", split="v"),
    )
    sample = next(iter(SampleDataset()))
    return ex.process(sample)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("compile_decoder", [False, True])
def test_extraction_on_cuda_agrees_with_cpu(compile_decoder):
    rec_cpu, tens_cpu = extract("cpu")
    rec_gpu, tens_gpu = extract("cuda", compile_decoder)
    assert rec_gpu["instances"] == rec_cpu["instances"]  # same prompts
    for key, t in tens_cpu.items():
        assert tens_gpu[key].dtype == np.float32 and tens_gpu[key].shape == t.shape
        assert cosine(tens_gpu[key], t) > 0.99, key
    f_cpu, f_gpu = rec_cpu["fields"]["tiny"]["original"], rec_gpu["fields"]["tiny"]["original"]
    for field in (
        "iou",
        "unsupervised_iou",
        "iou_dense_prompt",
        "sam_score",
        "entropy",
        "h_prompt",
    ):
        a, b = np.asarray(f_cpu[field], float), np.asarray(f_gpu[field], float)
        assert np.isfinite(b).all() and np.abs(a - b).mean() < 0.05, field


def test_training_on_cuda_is_deterministic_and_learns():
    from usam.train import Trainer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 512, generator=g)
    y = torch.sigmoid(x[:, :8].sum(1, keepdim=True) / 3).squeeze(1)
    x, y = x.cuda(), y.cuda()
    hp = {"batch_size": 128, "epochs": 20, "lr": 0.05, "momentum": 0.9}
    trainer = Trainer(device="cuda", progress=False)
    m1, losses = trainer.fit(x, y, hp)
    m2, _ = trainer.fit(x, y, hp)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert p1.device.type == "cuda" and torch.equal(p1, p2)
    assert losses[-1] < 0.5 * losses[0]


# -- issue 15: stacked trials, the captured step, batched encoding on the GPU ---------------------
def _rows(n: int = 3000):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 512, generator=g)
    return x.cuda(), torch.sigmoid(x[:, :8].sum(1) / 3).cuda()


HPS = [
    {"lr": 0.05, "momentum": 0.9, "batch_size": 128, "epochs": 3},
    {"lr": 0.01, "momentum": 0.3, "batch_size": 100, "epochs": 4, "weight_decay": 0.01},
    {"lr": 0.08, "momentum": 0.0, "batch_size": 37, "epochs": 1},
]


@pytest.mark.parametrize("step", ["eager", "cuda_graph", "compile"])
def test_stacked_trials_on_cuda_match_each_trial_alone(step):
    from usam.stacked import StackedMLPs
    from usam.train import Trainer

    x, y = _rows()
    stack = StackedMLPs(HPS, in_features=512, seed=4, device="cuda")
    stack.fit(x, y, step=step)
    trainer = Trainer(device="cuda", seed=4, progress=False)
    for i, hp in enumerate(HPS):
        alone, _ = trainer.fit(x, y, hp)
        for a, b in zip(alone.parameters(), stack.unstack(i).parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-5, rtol=0), (step, i)


@pytest.mark.parametrize("step", ["cuda_graph", "compile"])
def test_trainer_with_a_captured_step_trains_like_autograd_on_cuda(step):
    from usam.train import Trainer

    x, y = _rows()
    ref, ref_losses = Trainer(device="cuda", seed=2, progress=False).fit(x, y, HPS[0])
    model, losses = Trainer(device="cuda", seed=2, progress=False, step=step).fit(x, y, HPS[0])
    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert losses == pytest.approx(ref_losses, rel=1e-4)


def test_batched_encoding_on_cuda_agrees_with_one_image_at_a_time_on_cpu():
    from usam.datasets.sample import SampleDataset

    samples = list(SampleDataset())[:3]
    writer = RecordWriter(root="unused", dataset="s", split="v")
    cpu = Extractor(models=SamModels(**TINY, device="cpu"), augment=Augmentations(), writer=writer)
    gpu = Extractor(models=SamModels(**TINY, device="cuda"), augment=Augmentations(), writer=writer)
    alone = [cpu.process(s) for s in samples]
    together = gpu.process_many(samples, [None] * len(samples))
    assert gpu.models["tiny"].encoder_passes == len(samples)  # in one call
    for (r1, t1), (r2, t2) in zip(alone, together, strict=True):
        assert r2["instances"] == r1["instances"]
        for key, t in t1.items():
            assert cosine(t2[key], t) > 0.99, key
        f1, f2 = r1["fields"]["tiny"]["original"], r2["fields"]["tiny"]["original"]
        for field in ("iou", "unsupervised_iou", "iou_dense_prompt", "entropy"):
            a, b = np.asarray(f1[field], float), np.asarray(f2[field], float)
            assert np.isfinite(b).all() and np.abs(a - b).mean() < 0.05, field
