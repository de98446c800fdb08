"""python -m usam.app: SAM 2 with the USAM estimators in a web page (Gradio, `pip install -e ".[app]"`).

Open an image (or take a frame of the bundled sample), click foreground / background points
or two box corners, choose the SAM 2 size and the estimator folders: the page shows SAM's
three masks with SAM's score and every estimate per mask, the recommended mask highlighted,
what each estimate means in one line, and a banner when SAM's or an estimator's weights are
random. `sam_model=random` runs on a CPU without any download.
"""

from __future__ import annotations

import html
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from usam import CONF_DIR, registry
from usam.cli import run_stage, save_run
from usam.datasets.base import read_rgb
from usam.errors import UsamError
from usam.inference import Prediction, UncertainSAM, load_estimators
from usam.schema import TARGETS

log = logging.getLogger(__name__)

SAMPLE = Path(__file__).resolve().parent / "sample" / "JPEGImages" / "480p"
# one line per target: what its number says about a mask (SPEC "Stage 3"); gaps are signed
MEANING = {
    "iou_tiny": "expected IoU with the truth of SAM 2 tiny's best mask for this prompt",
    "iou_small": "expected IoU with the truth of SAM 2 small's best mask for this prompt",
    "iou_base_plus": "expected IoU with the truth of SAM 2 base+'s best mask for this prompt",
    "iou_large": "expected IoU with the truth of SAM 2 large's best mask for this prompt",
    "iou_dense_prompt": "expected IoU if the object were prompted with 8 points instead",
    "unsupervised_iou": "expected IoU of the mask that SAM's own score picks",
    "model_gap": "IoU a large SAM would gain over tiny (0 = a bigger model would not help)",
    "prompt_gap": "IoU more prompt points would gain (0 = the prompt is enough)",
    "task_gap": "IoU lost by taking SAM's top-scored mask, not the best (0 = the pick is right)",
}
_TINT = np.array([255, 144, 30], np.float32)
_FG, _BG, _BOX = (0, 200, 0), (230, 0, 0), (255, 220, 0)


def sample_images() -> dict[str, Path]:
    """First frame of each bundled sample video, by video name."""
    return {
        d.name: d / "00000.jpg" for d in sorted(SAMPLE.iterdir()) if (d / "00000.jpg").is_file()
    }


@dataclass
class Prompt:
    """The clicks so far: points with labels, and a box from two corner clicks."""

    points: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    corner: list[float] | None = None  # first box corner, waiting for the second
    box: list[float] | None = None

    def add(self, mode: str, x: float, y: float) -> None:
        if mode == "box corners":
            if self.corner is None:
                self.corner, self.box = [x, y], None
            else:
                (x0, y0), self.corner = self.corner, None
                self.box = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
        else:
            self.points.append([x, y])
            self.labels.append(0 if mode == "background point" else 1)

    def empty(self) -> bool:
        return not self.points and self.box is None

    def describe(self) -> str:
        parts = [
            f"({x:.0f}, {y:.0f}) {'fg' if lab else 'bg'}"
            for (x, y), lab in zip(self.points, self.labels, strict=True)
        ]
        if self.box is not None:
            parts.append("box ({:.0f}, {:.0f}, {:.0f}, {:.0f})".format(*self.box))
        if self.corner is not None:
            parts.append(
                "box corner ({:.0f}, {:.0f}): click the opposite corner".format(*self.corner)
            )
        return "; ".join(parts) or "no prompt yet: click the image"

    def kwargs(self) -> dict[str, Any]:
        return {
            "point_coords": np.array(self.points) if self.points else None,
            "point_labels": np.array(self.labels) if self.points else None,
            "box": np.array(self.box) if self.box is not None else None,
        }


class Models:
    """SAM 2 per size (built on first use, kept) and estimator sets (read on first use)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.sams: dict[str, Any] = {}
        self.estimators: dict[tuple[str, ...], dict] = {}
        # size -> the image its encoder saw last (kept, so `is` cannot match a new array)
        self.encoded: dict[str, np.ndarray] = {}
        # one SamModel holds one encoded image: page events (and sessions) take turns
        self.lock = threading.Lock()

    def sam(self, size: str):
        if size not in self.sams:
            sm, cfg = self.cfg.sam_model, self.cfg
            row = registry.resolve(sm.version, size, sm)
            common = dict(
                size=size,
                version=sm.version,
                config=row.config,
                device=sm.device,
                image_size=sm.image_size,
                batch_size=sm.batch_size,
            )
            if sm.random_weights:
                u = UncertainSAM.from_pretrained(None, random_weights=True, seed=sm.seed, **common)
            elif cfg.hub:
                u = UncertainSAM.from_pretrained(row.hub_id, **common)
            else:
                checkpoint = Path(sm.checkpoint_dir) / row.file
                u = UncertainSAM.from_pretrained(
                    checkpoint, sha256=(sm.sha256 or {}).get(size), **common
                )
            self.sams[size] = u.sam
        return self.sams[size]

    def usam(self, size: str, folders: list[str]) -> UncertainSAM:
        key = tuple(folders)
        if key not in self.estimators:
            self.estimators[key] = load_estimators(list(key)) if key else {}
        return UncertainSAM(self.sam(size), self.estimators[key])

    def predict(
        self, size: str, folders: list[str], image: np.ndarray, prompt: Prompt
    ) -> tuple[UncertainSAM, Prediction]:
        with self.lock:
            usam = self.usam(size, folders)
            if self.encoded.get(size) is not image:
                usam.set_image(image)
                self.encoded[size] = image
            return usam, usam.predict(**prompt.kwargs())


def recommended(pred: Prediction, size: str) -> tuple[int, str]:
    """The mask to use: highest estimated IoU for this SAM size when that estimator is loaded,
    else highest SAM score."""
    target = f"iou_{size}"
    if target in pred.estimates:
        return int(np.argmax(pred.estimates[target])), f"highest {target} estimate"
    return int(np.argmax(pred.scores)), "highest SAM score"


def draw_prompt(image: np.ndarray, prompt: Prompt) -> np.ndarray:
    img = np.ascontiguousarray(image.copy())
    s = max(1, round(min(img.shape[:2]) / 160))
    if prompt.box is not None:
        x0, y0, x1, y1 = (round(v) for v in prompt.box)
        cv2.rectangle(img, (x0, y0), (x1, y1), _BOX, s)
    if prompt.corner is not None:
        cv2.drawMarker(
            img, tuple(round(v) for v in prompt.corner), _BOX, cv2.MARKER_CROSS, 8 * s, s
        )
    for (x, y), lab in zip(prompt.points, prompt.labels, strict=True):
        cv2.circle(img, (round(x), round(y)), 3 * s + 1, (255, 255, 255), -1)
        cv2.circle(img, (round(x), round(y)), 3 * s, _FG if lab else _BG, -1)
    return img


def masks_panel(image: np.ndarray, pred: Prediction, best: int) -> np.ndarray:
    """The three masks side by side, each tinted on the image; the recommended one framed."""
    tiles = []
    for j, mask in enumerate(pred.masks):
        img = image.astype(np.float32)
        img[mask] = 0.45 * img[mask] + 0.55 * _TINT
        tile = img.round().astype(np.uint8)
        colour, width = ((0, 190, 0), 6) if j == best else ((200, 200, 200), 2)
        tile = cv2.copyMakeBorder(
            tile, width, width, width, width, cv2.BORDER_CONSTANT, value=colour
        )
        tiles.append(
            cv2.copyMakeBorder(tile, 0, 0, 4, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        )
    h = max(t.shape[0] for t in tiles)
    return np.concatenate(
        [
            cv2.copyMakeBorder(
                t, 0, h - t.shape[0], 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255)
            )
            for t in tiles
        ],
        1,
    )


def _fmt(target: str, v: float) -> str:
    return f"{v:+.3f}" if TARGETS.get(target, 0.0) else f"{v:.3f}"


def table_html(pred: Prediction, best: int, basis: str) -> str:
    """Masks as rows: SAM score and every estimate (cells carry data-mask / data-target)."""
    targets = list(pred.estimates)
    head = "".join(f"<th>{html.escape(t)}</th>" for t in ["mask", "SAM score", *targets])
    rows = []
    for j in range(len(pred.scores)):
        cells = [f'<td data-mask="{j}" data-target="sam_score">{pred.scores[j]:.3f}</td>']
        cells += [
            f'<td data-mask="{j}" data-target="{t}">{_fmt(t, float(pred.estimates[t][j]))}</td>'
            for t in targets
        ]
        mark = " (recommended)" if j == best else ""
        style = (
            ' class="usam-recommended" style="background:#d9f5d9;font-weight:bold"'
            if j == best
            else ""
        )
        rows.append(f"<tr{style}><td>mask {j}{mark}</td>{''.join(cells)}</tr>")
    meanings = "".join(
        f"<li><b>{html.escape(t)}</b>: {html.escape(MEANING.get(t, 'an estimate of a usam bundle'))}</li>"
        for t in targets
    )
    note = "" if targets else "<p>No estimator loaded: only SAM's scores.</p>"
    return (
        f'<table id="usam-estimates"><tr>{head}</tr>{"".join(rows)}</table>'
        f"<p>Recommended: mask {best} ({html.escape(basis)}). SAM score: SAM 2's own IoU guess.</p>"
        f"{note}<ul>{meanings}</ul>"
    )


def banner_html(usam: UncertainSAM | None, error: str | None = None) -> str:
    lines = []
    if error:
        lines.append(
            f'<div id="usam-error" style="color:#b00;font-weight:bold">{html.escape(error)}</div>'
        )
    if usam is not None:
        random_est = sorted(t for t, p in usam.estimators.items() if p.config.get("random_weights"))
        if usam.sam.random_weights:
            lines.append(
                "SAM 2 has RANDOM weights (sam_model=random): masks, scores and estimates mean nothing."
            )
        if random_est:
            lines.append(
                f"Estimators {', '.join(random_est)} were trained on RANDOM-weight SAM tokens: their numbers mean nothing."
            )
    body = "".join(f"<div>{x}</div>" if not x.startswith("<div") else x for x in lines)
    return (
        f'<div id="usam-banner" style="background:#fff3cd;padding:6px">{body}</div>' if body else ""
    )


def _short(folder: str) -> str:
    """A folder's last three parts: what tells estimator sets apart, without the home path."""
    parts = Path(folder).parts
    return str(Path(*parts[-3:])) if len(parts) > 3 else folder


def build(cfg: DictConfig):
    """The Gradio Blocks of the page (not launched)."""
    try:
        import gradio as gr
    except ImportError:
        raise UsamError(
            'the web app needs Gradio: pip install -e ".[app]" (or pip install gradio)'
        ) from None

    models = Models(cfg)
    folders = [str(f) for f in cfg.estimators or []]
    present = [f for f in folders if Path(f).is_dir()]
    missing = [f for f in folders if not Path(f).is_dir()]
    sizes = list(cfg.sam_model.sizes)
    samples = sample_images()
    start = (
        np.array(read_rgb(cfg.image))
        if cfg.image
        else np.array(read_rgb(next(iter(samples.values()))))
    )

    def segment(state, size, chosen):
        image, prompt = state["image"], state["prompt"]
        canvas = draw_prompt(image, prompt)
        desc = f'<div id="usam-prompt">{html.escape(prompt.describe())}</div>'
        if prompt.empty():
            return canvas, None, "", banner_html(None), desc
        try:
            usam, pred = models.predict(size, list(chosen or []), image, prompt)
        except UsamError as err:
            return canvas, None, "", banner_html(None, str(err)), desc
        best, basis = recommended(pred, size)
        return (
            canvas,
            masks_panel(image, pred, best),
            table_html(pred, best, basis),
            banner_html(usam),
            desc,
        )

    def new_image(image, size, chosen):
        state = {"image": np.ascontiguousarray(image), "prompt": Prompt()}
        return (state, *segment(state, size, chosen))

    def click(state, mode, size, chosen, evt: gr.SelectData):
        x, y = evt.index[0], evt.index[1]
        state["prompt"].add(mode, float(x), float(y))
        return (state, *segment(state, size, chosen))

    # Gradio passes the click's SelectData to a parameter annotated with the class itself;
    # this module's annotations are strings (from __future__), so name it explicitly
    click.__annotations__["evt"] = gr.SelectData

    def clear(state, size, chosen):
        state["prompt"] = Prompt()
        return (state, *segment(state, size, chosen))

    # analytics off: the page calls nowhere but its own server
    with gr.Blocks(title="usam: SAM 2 with uncertainty estimates", analytics_enabled=False) as demo:
        gr.Markdown(
            "## usam: SAM 2 with USAM uncertainty estimates\n"
            "Click the image to prompt SAM 2 (mode below), or upload your own image. "
            "Each mask gets SAM's score and every estimator's value."
        )
        state = gr.State({"image": start, "prompt": Prompt()})
        with gr.Row():
            with gr.Column():
                canvas = gr.Image(
                    value=start,
                    type="numpy",
                    interactive=False,
                    label="click to prompt",
                    elem_id="usam-canvas",
                )
                prompt_text = gr.HTML(f'<div id="usam-prompt">{Prompt().describe()}</div>')
                mode = gr.Radio(
                    ["foreground point", "background point", "box corners"],
                    value="foreground point",
                    label="a click adds",
                    elem_id="usam-mode",
                )
                with gr.Row():
                    clear_btn = gr.Button("clear prompt", elem_id="usam-clear")
                upload = gr.Image(
                    type="numpy", sources=["upload"], label="open an image", elem_id="usam-upload"
                )
                sample = gr.Dropdown(
                    list(samples), value=None, label="or a bundled sample", elem_id="usam-sample"
                )
            with gr.Column():
                banner = gr.HTML("")
                size = gr.Dropdown(
                    sizes,
                    value=sizes[0],
                    label=f"SAM {cfg.sam_model.version} size",
                    elem_id="usam-size",
                )
                chosen = gr.CheckboxGroup(
                    [(_short(f), f) for f in present],
                    value=present[:1],
                    label="estimator folders",
                    elem_id="usam-estimators",
                )
                if missing:
                    gr.Markdown(
                        "Not found: "
                        + ", ".join(f"`{m}`" for m in missing)
                        + ". Import the published estimators with `python -m usam.import_published <folder>`."
                    )
                panel = gr.Image(
                    type="numpy",
                    interactive=False,
                    label="SAM's three masks (recommended framed green)",
                    elem_id="usam-masks",
                )
                table = gr.HTML("", elem_id="usam-table")
        outputs = [canvas, panel, table, banner, prompt_text]
        canvas.select(click, [state, mode, size, chosen], [state, *outputs])
        clear_btn.click(clear, [state, size, chosen], [state, *outputs])
        upload.upload(new_image, [upload, size, chosen], [state, *outputs])
        sample.change(
            lambda name, s, c: (
                new_image(np.array(read_rgb(samples[name])), s, c) if name else (gr.skip(),) * 6
            ),
            [sample, size, chosen],
            [state, *outputs],
        )
        size.change(
            lambda st, s, c: (st, *segment(st, s, c)), [state, size, chosen], [state, *outputs]
        )
        chosen.change(
            lambda st, s, c: (st, *segment(st, s, c)), [state, size, chosen], [state, *outputs]
        )
    return demo


def run(cfg: DictConfig) -> dict[str, Any]:
    demo = build(cfg)
    log.info("usam app on http://%s:%d (Ctrl+C stops it)", cfg.host, cfg.port)
    demo.launch(server_name=cfg.host, server_port=cfg.port, share=False, quiet=False)
    return save_run(
        cfg,
        {
            "host": cfg.host,
            "port": cfg.port,
            "estimators": OmegaConf.to_container(cfg.estimators, resolve=True),
        },
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="app")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
