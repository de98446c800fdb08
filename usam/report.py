"""Stage 4's outputs: report.json, CSV tables, PNG plots, TensorBoard scalars and the printed
table, from the report dict that usam.evaluate.Evaluator computes (no maths here)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from usam.storage import atomic_path, write_json

log = logging.getLogger(__name__)

SHORT = {
    "model_selection": "model",
    "prompt_refinement": "prompt",
    "task_supervision": "task",
    "segmentation": "segm",
}
LABELS = {"in-sample": " [IN-SAMPLE]", "unverified": " [UNVERIFIED: training rows unknown]"}


def write_report(
    report: dict[str, Any], run_dir: Path, *, plots: bool = True, tensorboard: bool = True
) -> dict[str, Path]:
    """report.json, CSVs, PNGs and TensorBoard scalars; every file written atomically."""
    files = {"report": write_json(run_dir / "report.json", report)}
    cases = {k: v for k, v in report["use_cases"].items() if "curves" in v}
    for name, case in cases.items():
        names = list(case["curves"])
        rows = [[r, *(case["curves"][m][i] for m in names)] for i, r in enumerate(case["r"])]
        files[f"curves_{name}"] = write_csv(run_dir / f"curves_{name}.csv", ["r", *names], rows)
    measures = list(dict.fromkeys(m for case in cases.values() for m in case["relative_auc"]))
    files["relative_auc"] = write_csv(
        run_dir / "relative_auc.csv",
        ["measure", *cases],
        [[m, *(cases[c]["relative_auc"].get(m, float("nan")) for c in cases)] for m in measures],
    )
    corr = report["correlation"]
    files["correlation"] = write_csv(
        run_dir / "correlation.csv",
        ["measure", *corr["names"]],
        [[n, *row] for n, row in zip(corr["names"], corr["matrix"], strict=True)],
    )
    if plots:
        title = " [RANDOM SAM WEIGHTS]" if report["random_weights"] else ""
        title += LABELS.get(report["protocol"]["status"], "")
        for name, case in cases.items():
            files[f"plot_{name}"] = plot_curves(run_dir / f"curves_{name}.png", case, title)
        if len(corr["names"]) > 1:
            files["plot_correlation"] = plot_correlation(run_dir / "correlation.png", corr, title)
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tb"))
        try:
            for name, case in cases.items():
                for m, v in case["relative_auc"].items():
                    writer.add_scalar(f"relative_auc/{name}/{m}", v, 0)
                for m, curve in case["curves"].items():
                    for r, y in zip(case["r"], curve, strict=True):
                        writer.add_scalar(
                            f"curve/{name}/{m}", y, round(r * 1000)
                        )  # step = r in per mille
            for m, v in corr["with_iou"].items():
                writer.add_scalar(f"pearson_iou/{m}", v, 0)
        finally:
            writer.close()
    log.info("report written to %s", files["report"])
    return files


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    def fmt(v: Any) -> str:
        return f"{v:.10g}" if isinstance(v, float) else str(v)

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[fmt(v) for v in row] for row in rows])
    return path


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_curves(path: Path, case: dict[str, Any], title: str = "") -> Path:
    """Mean IoU over r for oracle, random and every score; legend = relative AUC."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    r = np.asarray(case["r"])
    for m, y in case["curves"].items():
        style = {
            "oracle": dict(color="black", ls="--", lw=2),
            "random": dict(color="gray", ls=":", lw=2),
        }.get(m, dict(lw=2.2 if m.startswith("usam_") else 1.2))
        ax.plot(r, y, label=f"{m} ({100 * case['relative_auc'][m]:.1f}%)", **style)
    ax.set_xlabel("fraction refined r (most uncertain first)")
    ax.set_ylabel("mean IoU")
    ax.set_title(f"{case['label']}, n={case['rows']}{title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="relative AUC",
        title_fontsize=8,
    )
    return _save(fig, path)


def plot_correlation(path: Path, corr: dict[str, Any], title: str = "") -> Path:
    """Heat map of the Pearson matrix, values written in the cells."""
    from matplotlib.figure import Figure

    names, m = corr["names"], np.asarray(corr["matrix"], dtype=np.float64)
    k = len(names)
    fig = Figure(figsize=(1.0 + 0.6 * k, 0.8 + 0.55 * k))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(m), cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                "-" if not np.isfinite(m[i, j]) else f"{m[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=6,
            )
    fig.colorbar(im, ax=ax, shrink=0.8, label="Pearson r")
    ax.set_title(
        f"Pearson correlation, {corr['model']} rows (n={corr['rows']}){title}", fontsize=10
    )
    return _save(fig, path)


def format_table(report: dict[str, Any]) -> str:
    """Relative AUC (%) per measure and use case, and Pearson r with the GT IoU."""
    cases = {k: v for k, v in report["use_cases"].items() if "relative_auc" in v}
    names = list(dict.fromkeys(m for c in cases.values() for m in c["relative_auc"]))
    names += [m for m in report["correlation"]["with_iou"] if m not in names]
    pearson = report["correlation"]["with_iou"]
    heads = [SHORT.get(c, c) for c in cases] + ["r(IoU)"]
    width = max([len(n) for n in names] + [7])

    def cell(v: float | None, pct: bool) -> str:
        if v is None or not np.isfinite(v):
            return "-"
        return f"{100 * v:.1f}" if pct else f"{v:+.3f}"

    lines = []
    if report["random_weights"]:
        lines.append("!" * 12 + " " + report["warning"] + " " + "!" * 12)
    protocol = report["protocol"]
    lines.append(
        f"USAM evaluation{LABELS.get(protocol['status'], '')}: {report['container']} "
        f"(split={report['split']}, model={report['model']}, {report['rows']} rows of all models); "
        "relative AUC in %, Pearson r with the GT IoU"
    )
    lines.append(protocol["statement"])
    lines.append(f"{'measure':<{width}}  " + "  ".join(f"{h:>7}" for h in heads))
    for n in names:
        row = [cell(cases[c]["relative_auc"].get(n), True) for c in cases] + [
            cell(pearson.get(n), False)
        ]
        lines.append(f"{n:<{width}}  " + "  ".join(f"{v:>7}" for v in row))
    lines.append("rows: " + ", ".join(f"{SHORT.get(c, c)}={v['rows']}" for c, v in cases.items()))
    left_out = sorted({m for v in cases.values() for m in v["left_out"]})
    if left_out:
        lines.append(f"left out (NaN on every row): {', '.join(left_out)}")
    for c, v in report["use_cases"].items():
        if "skipped" in v:
            lines.append(f"{c}: skipped ({v['skipped']})")
    return "\n".join(lines)
