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
