"""python -m usam.import_published: published state dicts -> usam bundles, and estimates that
equal the published MLP's forward pass on the published token pairing.

The state dicts have exactly the published keys and shapes with three different layers
(tests/published.py); SAM 2 is a seeded random tiny model at image_size=128.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from published import DecoderTokens, published_forward, published_state, write_published
from sam2.sam2_image_predictor import SAM2ImagePredictor

import usam.import_published as import_published
from usam.cli import run_stage
from usam.errors import UsamError
from usam.import_published import _positional_source, load_published, read_published, run
from usam.inference import UncertainSAM, load_bundles
from usam.mlp import Estimator, UsamMLP, load_bundle, save_bundle
from usam.sam import load_sam_model
from usam.schema import TARGETS

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
# published folder name -> seed: every target a different MLP
SEEDS = {"iou_tiny": 11, "iou_unsupervised": 12, "task_gap": 13, "prompt_gap": 14}
POINTS = np.array([[[15.0, 12.0]], [[30.0, 20.0]], [[50.0, 35.0]]], np.float32)


def image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((40, 56, 3), np.uint8)
    img[8:30, 10:40] = (200, 40, 40)
    return np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)


def import_cfg(compose_cfg, source, out, *extra):
    return compose_cfg("import_published", [f"source={source}", f"out={out}", *extra])


@pytest.fixture
def checkout(tmp_path):
    """A published checkout with both versions; sam2.0's weights differ from sam2.1's."""
    root = tmp_path / "UncertainSAM"
    write_published(root, "sam2.1", SEEDS)
    write_published(root, "sam2.0", {"iou_tiny": 21, "model_gap": 22})
    return root


@pytest.fixture(scope="module")
def sam():
    return load_sam_model("tiny", None, TINY, random_weights=True, image_size=128, device="cpu")


# --------------------------------------------------------------------------- the import


def test_a_checkout_becomes_bundles_with_targets_version_sizes_and_pairing(
    compose_cfg, checkout, tmp_path
):
    out = tmp_path / "models"
    summary = run(import_cfg(compose_cfg, checkout, out))
    assert sorted(summary["bundles"]) == ["sam2.0", "sam2.1"]
    assert sorted(p.name for p in (out / "sam2.1").iterdir()) == [
        "iou_tiny",
        "prompt_gap",
        "task_gap",
        "unsupervised_iou",  # the published iou_unsupervised
    ]
    assert sorted(p.name for p in (out / "sam2.0").iterdir()) == ["iou_tiny", "model_gap"]
    _, config = load_bundle(out / "sam2.1" / "unsupervised_iou")
    assert config["target"] == "unsupervised_iou" and config["sam_version"] == "sam2.1"
    assert config["models"] == ["tiny", "small", "base_plus", "large"]
    assert config["token_pairing"] == "published" and config["random_weights"] is False
    src = checkout / "models/mlps/sam2.1/iou_unsupervised/model.pth"
    assert config["imported_from"]["file"] == str(src.resolve())
    assert summary["use"]["sam2.1"] == str(out / "sam2.1")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["out"] == str(out)


def test_imported_bundles_compute_the_published_forward_pass(compose_cfg, checkout, tmp_path):
    out = tmp_path / "models"
    run(import_cfg(compose_cfg, checkout, out))
    x = torch.randn(7, 512, generator=torch.Generator().manual_seed(3))
    for version, names in [("sam2.1", SEEDS), ("sam2.0", {"iou_tiny": 21, "model_gap": 22})]:
        for name, seed in names.items():
            target = {"iou_unsupervised": "unsupervised_iou"}.get(name, name)
            got = Estimator.load(out / version / target)(x)
            want = published_forward(published_state(seed), x) - TARGETS[target]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the versions' weights differ, so a bundle did not land in the other version's folder
    a = Estimator.load(out / "sam2.1" / "iou_tiny")(x)
    assert not torch.allclose(a, Estimator.load(out / "sam2.0" / "iou_tiny")(x))


def test_one_version_folder_takes_its_version_from_the_name(compose_cfg, checkout, tmp_path):
    summary = run(import_cfg(compose_cfg, checkout / "models/mlps/sam2.0", tmp_path / "m"))
    assert list(summary["bundles"]) == ["sam2.0"]
    assert load_bundle(tmp_path / "m/sam2.0/model_gap")[1]["sam_version"] == "sam2.0"
    renamed = tmp_path / "mlps_copy"
    (checkout / "models/mlps/sam2.1").rename(renamed)
    with pytest.raises(UsamError, match="cannot tell the SAM version.*version=sam2.0"):
        run(import_cfg(compose_cfg, renamed, tmp_path / "m"))
    run(import_cfg(compose_cfg, renamed, tmp_path / "m", "version=sam2.1"))
    assert (tmp_path / "m/sam2.1/unsupervised_iou/config.json").is_file()


def test_a_rerun_keeps_identical_bundles_and_refuses_to_replace_others(
    compose_cfg, checkout, tmp_path
):
    out = tmp_path / "models"
    run(import_cfg(compose_cfg, checkout, out))
    again = run(import_cfg(compose_cfg, checkout, out))
    assert {e["status"] for e in again["bundles"]["sam2.1"]} == {"skipped"}
    before = (out / "sam2.1/task_gap/model.safetensors").read_bytes()
    torch.save(published_state(99), checkout / "models/mlps/sam2.1/task_gap/model.pth")
    with pytest.raises(UsamError, match="task_gap already holds a bundle with other weights"):
        run(import_cfg(compose_cfg, checkout, out))
    assert (out / "sam2.1/task_gap/model.safetensors").read_bytes() == before
    run(import_cfg(compose_cfg, checkout, out, "overwrite=true"))
    x = torch.randn(4, 512)
    want = published_forward(published_state(99), x) - 0.5
    torch.testing.assert_close(Estimator.load(out / "sam2.1/task_gap")(x), want, atol=1e-6, rtol=0)


class NotAStateDict:
    pass


def _bad(state_fn):
    def write(path):
        torch.save(state_fn(), path)

    return write


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b"not a torch file"), "weights_only=True"),
        (_bad(lambda: {"obj": NotAStateDict()}), "weights_only=True"),
        (_bad(lambda: [torch.zeros(1)]), "not a plain state dict"),
        (_bad(lambda: {**published_state(1), "layers.3.weight": torch.zeros(1, 1)}), "layers.3"),
        (
            _bad(lambda: {k: v for k, v in published_state(1).items() if k != "layers.2.bias"}),
            "missing \\['layers.2.bias'\\]",
        ),
        (
            _bad(lambda: {**published_state(1), "layers.1.weight": torch.zeros(256, 512)}),
            "layers.1.weight is .* \\(256, 512\\)",
        ),
        (
            _bad(
                lambda: {**published_state(1), "layers.0.bias": torch.zeros(512, dtype=torch.long)}
            ),
            "float tensor",
        ),
        (
            _bad(lambda: {**published_state(1), "layers.2.bias": torch.tensor([float("nan")])}),
            "NaN",
        ),
        (
            _bad(lambda: {"net." + k: v for k, v in published_state(1).items()}),
            "not a published USAM MLP",
        ),
    ],
)
def test_anything_but_the_published_state_dict_is_refused_and_nothing_is_written(
    compose_cfg, checkout, tmp_path, write, message
):
    bad = checkout / "models/mlps/sam2.1/task_gap/model.pth"
    write(bad)
    with pytest.raises(UsamError, match=message) as err:
        run(import_cfg(compose_cfg, checkout / "models/mlps/sam2.1", tmp_path / "out"))
    assert str(bad) in str(err.value)
    assert not (tmp_path / "out").exists()  # every file is checked before any is written


def test_an_ordered_dict_as_torch_saves_it_is_accepted(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(OrderedDict(published_state(5)), path)
    assert set(read_published(path)) == set(published_state(5))


@pytest.mark.parametrize(
    "layout, message",
    [
        ("nothing", "no <target>/model.pth in it"),
        ("unknown", r"\['iou_huge'\] are not published estimator names"),
        ("file", "is not a folder"),
        ("no_version", "no sam2.0 or sam2.1 folder"),
    ],
)
def test_bad_folders_are_refused(compose_cfg, tmp_path, layout, message):
    src = tmp_path / "src" / "sam2.1"
    src.mkdir(parents=True)
    if layout == "unknown":
        write_published(tmp_path / "x", "sam2.1", {"iou_huge": 1, "iou_tiny": 2})
        src = tmp_path / "x/models/mlps/sam2.1"
    elif layout == "file":
        src = src / "model.pth"
        src.write_bytes(b"")
    elif layout == "no_version":
        (tmp_path / "repo/models/mlps/sam3").mkdir(parents=True)
        src = tmp_path / "repo"
    with pytest.raises(UsamError, match=message):
        run(import_cfg(compose_cfg, src, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_the_command_takes_the_folder_as_its_first_argument(checkout, tmp_path):
    assert _positional_source(["m", "/a/b", "out=x"]) == ["m", "source=/a/b", "out=x"]
    assert _positional_source(["m", "source=/a/b"]) == ["m", "source=/a/b"]
    assert _positional_source(["m", "--help"]) == ["m", "--help"]
    env = {**os.environ, "USAM_OUTPUTS": str(tmp_path / "logs")}
    proc = subprocess.run(
        [sys.executable, "-m", "usam.import_published", str(checkout), f"out={tmp_path / 'o'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["use"]["sam2.1"] == str(
        tmp_path / "o" / "sam2.1"
    )
    bad = subprocess.run(
        [sys.executable, "-m", "usam.import_published", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert bad.returncode == 1 and "nowhere is not a folder" in bad.stderr
    assert "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- the estimates


def test_estimates_equal_the_published_mlp_on_the_published_pairing(
    compose_cfg, checkout, tmp_path, sam
):
    """Published bundles read token j for mask j; a usam bundle in the same UncertainSAM
    reads token j+1. Reference: the published forward pass on tokens read by the test's hooks
    around SAM 2's own predictor."""
    out = tmp_path / "models"
    run(import_cfg(compose_cfg, checkout, out))
    torch.manual_seed(7)
    save_bundle(  # a usam-trained bundle beside them (another target: one key per target)
        tmp_path / "own" / "iou_large",
        UsamMLP(),
        {"target": "iou_large", "output_shift": 0.0, "sam_version": "sam2.1", "models": ["tiny"]},
    )
    preds = {**load_bundles(out / "sam2.1"), **load_bundles(tmp_path / "own")}
    usam = UncertainSAM(sam, preds)
    usam.set_image(image())
    got = usam.predict(POINTS)

    upstream = SAM2ImagePredictor(sam.model)
    upstream._bb_feat_sizes = sam.sam_predictor._bb_feat_sizes
    with torch.inference_mode():
        upstream.set_image(image())
    with DecoderTokens(sam.model) as tokens, torch.inference_mode():
        upstream.predict(POINTS, np.ones((3, 1)), multimask_output=True)
    published_rows, usam_rows = tokens.rows([0, 1, 2]), tokens.rows([1, 2, 3])
    for name, seed in SEEDS.items():
        target = {"iou_unsupervised": "unsupervised_iou"}.get(name, name)
        want = published_forward(published_state(seed), published_rows) - TARGETS[target]
        np.testing.assert_allclose(got.estimates[target], want.numpy(), rtol=0, atol=1e-5)
        wrong = published_forward(published_state(seed), usam_rows) - TARGETS[target]
        assert np.abs(got.estimates[target] - wrong.numpy()).max() > 1e-3  # pairing matters
    own = Estimator.load(tmp_path / "own" / "iou_large")(usam_rows.reshape(-1, 512)).view(3, 3)
    np.testing.assert_allclose(got.estimates["iou_large"], own.numpy(), rtol=0, atol=1e-5)
    assert list(got.estimates) == list(preds)  # the bundles' order


def test_usam_predict_runs_on_imported_bundles(compose_cfg, checkout, tmp_path):
    from PIL import Image

    from usam.predict import run as predict_run

    run(import_cfg(compose_cfg, checkout, tmp_path / "models"))
    Image.fromarray(image()).save(tmp_path / "photo.png")
    cfg_overrides = [
        "sam_model=random",
        "sam_model.image_size=128",
        "sam_model.device=cpu",
        f"image={tmp_path / 'photo.png'}",
        "point=[30,20]",
        f"estimators={tmp_path / 'models' / 'sam2.1'}",
    ]
    cfg = compose_cfg("predict", cfg_overrides)
    summary = run_stage(predict_run, cfg)
    assert sorted(summary["estimates"]) == sorted(
        ["iou_tiny", "unsupervised_iou", "task_gap", "prompt_gap"]
    )
    assert all(len(v) == 3 for v in summary["estimates"].values())
    assert Path(summary["overlay"]).is_file()
    # the published folder itself, read in memory: the same numbers
    direct_overrides = [*cfg_overrides[:-1], f"estimators={checkout / 'models/mlps/sam2.1'}"]
    direct = run_stage(predict_run, compose_cfg("predict", direct_overrides))
    assert direct["estimates"] == summary["estimates"]
    single = run_stage(
        predict_run, compose_cfg("predict", [*cfg_overrides, "multimask_output=false"])
    )
    assert single["best"] == 0 and len(single["scores"]) == 1
    assert all(len(v) == 1 for v in single["estimates"].values())


# -- from the mutation run (issue 16) --

LOGGER = "usam.import_published"
FOLDER_HINT = "pass a checkout of the published repository or its models/mlps/sam2.X folder"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def log_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def entry(src: Path, out: Path, name: str, target: str, status: str) -> dict:
    f = src / name / "model.pth"
    bundle = str(out / "sam2.1" / target)
    return {
        "target": target,
        "source": str(f),
        "sha256": sha256(f),
        "bundle": bundle,
        "status": status,
    }


SAM21 = [  # the sam2.1 checkout's folder names -> targets, in the order they are imported
    ("iou_tiny", "iou_tiny"),
    ("iou_unsupervised", "unsupervised_iou"),
    ("prompt_gap", "prompt_gap"),
    ("task_gap", "task_gap"),
]


def test_the_summary_and_the_log_name_every_file_bundle_and_digest(
    compose_cfg, checkout, tmp_path, caplog
):
    src, out = checkout / "models/mlps/sam2.1", tmp_path / "models"
    with caplog.at_level(logging.INFO, logger=LOGGER):
        summary = run(import_cfg(compose_cfg, src, out))
    want = {
        "source": str(src),
        "out": str(out),
        "bundles": {"sam2.1": [entry(src, out, n, t, "imported") for n, t in SAM21]},
        "use": {"sam2.1": str(out / "sam2.1")},
    }
    assert summary == want
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == want
    assert log_lines(caplog) == [
        *(f"{src / n / 'model.pth'} -> {out / 'sam2.1' / t}" for n, t in SAM21),
        f"use them with: UncertainSAM.from_pretrained(..., estimators='{out / 'sam2.1'}')",
    ]


def test_a_rerun_writes_only_the_missing_bundle_and_says_which_were_kept(
    compose_cfg, checkout, tmp_path, caplog
):
    src, out = checkout / "models/mlps/sam2.1", tmp_path / "models"
    run(import_cfg(compose_cfg, src, out))
    kept = (out / "sam2.1/iou_tiny/model.safetensors").stat().st_mtime_ns
    for f in (out / "sam2.1/prompt_gap").iterdir():  # the third of four: one kept on each side
        f.unlink()
    (out / "sam2.1/prompt_gap").rmdir()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = run(import_cfg(compose_cfg, src, out))
    status = {"prompt_gap": "imported"}
    assert again["bundles"]["sam2.1"] == [
        entry(src, out, n, t, status.get(n, "skipped")) for n, t in SAM21
    ]
    kept_line = "{}: already imported from the same file"
    assert log_lines(caplog) == [
        kept_line.format(out / "sam2.1/iou_tiny"),
        kept_line.format(out / "sam2.1/unsupervised_iou"),
        f"{src / 'prompt_gap/model.pth'} -> {out / 'sam2.1/prompt_gap'}",
        kept_line.format(out / "sam2.1/task_gap"),
        f"use them with: UncertainSAM.from_pretrained(..., estimators='{out / 'sam2.1'}')",
    ]
    assert (out / "sam2.1/iou_tiny/model.safetensors").stat().st_mtime_ns == kept
    x = torch.randn(5, 512, generator=torch.Generator().manual_seed(4))
    want = published_forward(published_state(SEEDS["prompt_gap"]), x) - TARGETS["prompt_gap"]
    torch.testing.assert_close(
        Estimator.load(out / "sam2.1/prompt_gap")(x), want, atol=1e-6, rtol=0
    )
    torch.save(published_state(99), src / "task_gap/model.pth")
    with pytest.raises(UsamError) as err:
        run(import_cfg(compose_cfg, src, out))
    assert str(err.value) == (
        f"{out / 'sam2.1/task_gap'} already holds a bundle with other weights; "
        "pass overwrite=true to replace it, or another out="
    )


def test_a_checkout_with_a_version_imports_only_that_version(compose_cfg, checkout, tmp_path):
    out = tmp_path / "models"
    summary = run(import_cfg(compose_cfg, checkout, out, "version=sam2.1"))
    assert list(summary["bundles"]) == ["sam2.1"] and summary["use"] == {
        "sam2.1": str(out / "sam2.1")
    }
    assert sorted(p.name for p in out.iterdir()) == ["sam2.1"]
    assert [e["target"] for e in summary["bundles"]["sam2.1"]] == [t for _, t in SAM21]


def test_a_version_folder_given_its_own_version_imports(compose_cfg, checkout, tmp_path):
    src = checkout / "models/mlps/sam2.0"
    summary = run(import_cfg(compose_cfg, src, tmp_path / "m", "version=sam2.0"))
    assert [e["bundle"] for e in summary["bundles"]["sam2.0"]] == [
        str(tmp_path / "m/sam2.0/iou_tiny"),
        str(tmp_path / "m/sam2.0/model_gap"),
    ]


@pytest.mark.parametrize(
    "layout, overrides, message",
    [
        ("file", [], "{src_resolved} is not a folder; " + FOLDER_HINT),
        ("empty", [], "{src}: no <target>/model.pth in it; " + FOLDER_HINT),
        (
            "sam2.0",
            ["version=sam2.1"],
            "{src}: the folder name says sam2.0 but version=sam2.1 was given",
        ),
        ("renamed", ["version=sam3"], "version=sam3: use one of sam2.0, sam2.1"),
        (
            "renamed",
            [],
            "{src}: cannot tell the SAM version from the folder name 'mlps_copy'; "
            "pass version=sam2.0 or version=sam2.1",
        ),
        ("checkout", ["version=sam3"], "{src}/models/mlps: no sam3 folder in it"),
    ],
    ids=["file", "no_model_pth", "name_vs_version", "bad_version", "no_version", "no_such_version"],
)
def test_bad_sources_are_refused_with_the_exact_message(
    compose_cfg, checkout, tmp_path, layout, overrides, message
):
    if layout == "file":
        src = checkout / "models/mlps/sam2.1/iou_tiny/model.pth"
    elif layout == "empty":
        src = tmp_path / "empty" / "sam2.1"
        (src / "iou_tiny").mkdir(parents=True)  # a folder without its model.pth
    elif layout == "sam2.0":
        src = checkout / "models/mlps/sam2.0"
    elif layout == "renamed":
        src = tmp_path / "mlps_copy"
        (checkout / "models/mlps/sam2.1").rename(src)
    else:
        src = checkout
    with pytest.raises(UsamError) as err:
        run(import_cfg(compose_cfg, src, tmp_path / "out", *overrides))
    assert str(err.value) == message.format(src=src, src_resolved=src.resolve())
    assert not (tmp_path / "out").exists()


def test_no_source_is_refused_with_the_command_line(compose_cfg, tmp_path):
    with pytest.raises(UsamError) as err:
        run(compose_cfg("import_published", [f"out={tmp_path / 'out'}"]))
    assert str(err.value) == (
        "no source: python -m usam.import_published <folder> (a checkout of the published "
        "repository or its models/mlps/sam2.X folder)"
    )


RAN: list[str] = []


def _record(what):
    RAN.append(what)
    return {k: torch.zeros(v) for k, v in import_published.SHAPES.items()}


class RunsCodeOnLoad:
    def __reduce__(self):
        return (_record, ("unpickled",))


def test_unreadable_files_are_refused_with_the_loader_s_first_line(tmp_path):
    prefix = "not a plain PyTorch state dict loadable with weights_only=True"
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")  # torch raises EOFError with no text: its type stands in
    with pytest.raises(UsamError) as err:
        read_published(empty)
    assert str(err.value) == f"{empty}: {prefix} (EOFError)"
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(None, protocol=2))  # no torch magic number
    with pytest.raises(UsamError) as err:
        read_published(legacy)
    assert str(err.value) == f"{legacy}: {prefix} (Invalid magic number; corrupt file?)"
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(UsamError) as err:
        read_published(listed)
    assert str(err.value) == f"{listed}: not a plain state dict of tensors (got list)"


def test_a_pickle_that_runs_code_is_refused_even_when_torch_defaults_to_full_pickle(
    tmp_path, monkeypatch
):
    path = tmp_path / "model.pth"
    torch.save(RunsCodeOnLoad(), path)
    RAN.clear()
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch.load's default: no
    with pytest.raises(UsamError) as err:
        read_published(path)
    assert RAN == []
    assert str(err.value).startswith(
        f"{path}: not a plain PyTorch state dict loadable with weights_only=True (Weights only"
    )


def test_a_state_dict_saved_from_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    path, state = tmp_path / "model.pth", published_state(6)
    with monkeypatch.context() as m:  # storages tagged cuda:0, as torch.save on a GPU writes
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, path)
    loaded = read_published(path)
    assert {k: v.device.type for k, v in loaded.items()} == dict.fromkeys(state, "cpu")
    for k, v in state.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)


def test_a_published_folder_read_in_memory_takes_its_version_only_from_its_name(checkout, tmp_path):
    estimators = load_published(checkout / "models/mlps/sam2.0")
    assert list(estimators) == ["iou_tiny", "model_gap"]
    assert estimators["model_gap"].config == {
        "target": "model_gap",
        "output_shift": TARGETS["model_gap"],
        "sam_version": "sam2.0",
        "models": ["tiny", "small", "base_plus", "large"],
        "token_pairing": "published",
        "random_weights": False,
    }
    assert estimators["iou_tiny"].config["sam_version"] == "sam2.0"
    renamed = tmp_path / "mlps_copy"
    (checkout / "models/mlps/sam2.1").rename(renamed)
    estimators = load_published(renamed)
    assert {n: e.config["sam_version"] for n, e in estimators.items()} == dict.fromkeys(
        [n for n, _ in SAM21], None
    )
    assert estimators["iou_unsupervised"].config["target"] == "unsupervised_iou"


@pytest.mark.parametrize(
    "argv, want",
    [
        (["cmd"], ["cmd"]),
        (["cmd", "/a/b"], ["cmd", "source=/a/b"]),
        (
            ["cmd", "/a/b", "out=x", "version=sam2.1"],
            ["cmd", "source=/a/b", "out=x", "version=sam2.1"],
        ),
        (["cmd", "source=/a/b", "out=x"], ["cmd", "source=/a/b", "out=x"]),
        (["cmd", "out=x", "/a/b"], ["cmd", "out=x", "/a/b"]),
        (["cmd", "--help"], ["cmd", "--help"]),
        (["cmd", "-m", "/a/b"], ["cmd", "-m", "/a/b"]),
    ],
)
def test_only_a_bare_first_path_becomes_the_source(argv, want):
    assert _positional_source(argv) == want


def test_main_hands_hydra_the_folder_as_source(monkeypatch):
    seen = []
    monkeypatch.setattr(import_published, "_main", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["usam.import_published", "/pub/UncertainSAM", "out=o"])
    import_published.main()
    assert seen == [["usam.import_published", "source=/pub/UncertainSAM", "out=o"]]
