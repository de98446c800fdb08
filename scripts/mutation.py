"""Mutation testing of the maths and data-path modules, one module at a time (docs/testing.md).

    python scripts/mutation.py                      # every module in MODULES, cheapest first
    python scripts/mutation.py measures prompts     # some of them
    python scripts/mutation.py --list               # the modules and their tests
    python scripts/mutation.py split --survivors    # the surviving mutants of a finished run, with diffs
    python scripts/mutation.py train --only 'usam.train.x_check_*'   # some of a module's mutants

Each module runs mutmut (the `mutation` extra) in its own work folder
`.mutation/<module>/` (git-ignored): a copy of `usam/`, `tests/` and `conf/` with a
pyproject.toml that mutates that one file and runs only its targeted tests, so a run
costs minutes on 2 cores, not the suite's time per mutant. mutmut caches results there:
a rerun retests only mutants whose code changed (`--fresh` starts over). The score is
killed / (killed + survived); "no tests" and timeouts are reported separately.
Mutation runs are not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".mutation"

# name -> (file to mutate, pytest selection). Selections leave out tests that start
# subprocesses or real SAM 2 (they cost minutes per mutant and check plumbing, not maths).
MODULES: dict[str, tuple[str, list[str]]] = {
    "measures": ("usam/measures.py", ["tests/test_measures.py"]),
    "prompts": ("usam/prompts.py", ["tests/test_prompts.py"]),
    "evaluation": ("usam/evaluation.py", ["tests/test_evaluation.py"]),
    # the Container reader: columns, filters, the group split
    "containers": (
        "usam/container/reader.py",
        ["tests/test_container.py", "tests/test_container_reader.py", "-k", "not cli and not seed"],
    ),
    # one record -> its rows (pure numpy): the unit tests alone, no files
    "rows": ("usam/container/rows.py", ["tests/test_container_rows.py"]),
    "augment": ("usam/augment.py", ["tests/test_augment.py"]),
    # with the prefetch tests (they drive Extractor.run with fakes) and the in-process runs
    # of the stage on random SAM 2 (settings, resume, shards, skips): seconds per mutant
    "extract": (
        "usam/extract.py",
        ["tests/test_extract.py", "tests/test_prefetch.py", "-k", "not cli and not seed"],
    ),
    # the writer's orchestration and overwrite rules (rows.py has its own entry)
    "container": (
        "usam/container/writer.py",
        [
            "tests/test_container.py",
            "tests/test_container_writer.py",
            "tests/hostile/test_container_overwrite.py",
            "tests/hostile/test_records.py::test_container_builds_of_killed_runs_are_removed_on_the_next_build",
            "tests/hostile/test_records.py::test_the_container_skips_and_counts_a_half_replaced_record",
            "-k",
            "not cli and not seed",
        ],
    ),
    # with the hostile training tests: they hold the checks of Objective, the non-finite
    # guards and the bad options, which tests/test_train.py alone leaves as "no tests"
    "train": (
        "usam/train.py",
        [
            "tests/test_train.py",
            "tests/hostile/test_training.py",
            "-k",
            "not sweep and not learns and not command_line",
        ],
    ),
    "mlp": ("usam/mlp.py", ["tests/test_train.py", "-k", "bundle or shuffle or claims or mlp"]),
    # with the predict stage's in-process tests: they hold the prompt geometry checks
    "inference": (
        "usam/inference.py",
        [
            "tests/test_inference.py",
            "tests/test_predict.py",
            "tests/hostile/test_predict.py",
            "-m",
            "not slow",
            "-k",
            "not test_cli_",  # a subprocess; plain "cli" would also drop "clip it" ids
        ],
    ),
    # the out-of-sample checks and the video-track metrics (issue 16, item 3: new work)
    "protocol": (
        "usam/protocol.py",
        [
            "tests/test_protocol.py",
            "tests/test_evaluate.py",
            # subprocesses, and augment_dataset imports scripts/, which the work folder lacks
            "-k",
            "not train_all and not test_cli_ and not augment_dataset",
        ],
    ),
    "track_metrics": ("usam/track_metrics.py", ["tests/test_track_metrics.py"]),
    "import_published": (
        "usam/import_published.py",
        ["tests/test_import_published.py", "-k", "not first_argument"],
    ),
    "coco": ("usam/datasets/coco.py", ["tests/test_coco.py"]),
    "davis": ("usam/datasets/davis.py", ["tests/test_davis.py"]),
    "ade20k": ("usam/datasets/ade20k.py", ["tests/test_ade20k.py"]),
    "mose": ("usam/datasets/mose.py", ["tests/test_mose.py"]),
    "sav": ("usam/datasets/sav.py", ["tests/test_sav.py"]),
    "base": ("usam/datasets/base.py", ["tests/test_datasets_base.py"]),
}

STATUS = {"killed", "survived", "no tests", "timeout", "suspicious", "skipped", "not checked"}


def pyproject(path: str, selection: list[str]) -> str:
    """The work folder's pyproject: mutate `path` only, test with `selection` only."""
    return f"""[tool.mutmut]
source_paths = ["usam"]
only_mutate = [{json.dumps(path)}]
pytest_add_cli_args_test_selection = {json.dumps(selection)}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
also_copy = ["conf"]
# torch is not fork-safe once it has run: fork each mutant from a clean server process
process_isolation = "forkserver"
# generous: 2 cores shared with other jobs stretch wall time, and a false "timeout" hides a verdict
timeout_multiplier = 10.0
timeout_constant = 15.0

[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["slow: builds every SAM 2 size on the CPU"]
"""


def prepare(name: str, fresh: bool) -> Path:
    path, selection = MODULES[name]
    work = WORK / name
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for folder in ("usam", "tests", "conf"):
        # the sources are copied every time, so a rerun tests the current code
        shutil.rmtree(work / folder, ignore_errors=True)
        shutil.copytree(
            REPO / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    (work / "pyproject.toml").write_text(pyproject(path, selection))
    return work


def mutmut(work: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    # one thread per process: 2 shared cores, and OpenMP threads fighting make tests crawl
    # temp folders inside the work folder, removed after the run (see the pytest options)
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": _path(), "TMPDIR": str(tmp)}
    stop = threading.Event()
    threading.Thread(target=janitor, args=(tmp, stop), daemon=True).start()
    try:
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from mutmut.__main__ import cli; sys.exit(cli())",
                *args,
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        stop.set()
        shutil.rmtree(tmp, ignore_errors=True)


def janitor(tmp: Path, stop: threading.Event, max_age: float = 600.0) -> None:
    """Remove pytest's numbered temp folders older than `max_age` seconds until `stop`.

    mutmut runs each mutant as a pytest session in a forked process that never releases
    its numbered folder, so pytest's own keep-the-last-3 cleanup never removes one: the
    inference tests (a 150 MB checkpoint per session) once filled a 250 GB disk. 600 s is
    longer than any mutant's test run here, so no folder in use is removed.
    """
    while not stop.wait(30):
        for folder in tmp.glob("pytest-of-*/pytest-*"):
            try:
                old = time.time() - folder.lstat().st_mtime > max_age
            except FileNotFoundError:
                continue
            if old and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)


def _path() -> str:
    return os.environ.get("PATH", "")


def results(work: Path) -> dict[str, str]:
    """mutant name -> status, from `mutmut results --all true`."""
    out = mutmut(work, "results", "--all", "true").stdout
    found = {}
    for line in out.splitlines():
        if ":" not in line:
            continue
        mutant, status = (s.strip() for s in line.rsplit(":", 1))
        if status in STATUS:
            found[mutant] = status
    return found


def score(found: dict[str, str]) -> dict[str, object]:
    """score: killed / (killed + survived); with_timeouts counts a timeout as detected."""
    counts = {s: sum(1 for v in found.values() if v == s) for s in sorted(set(found.values()))}
    killed, survived = counts.get("killed", 0), counts.get("survived", 0)
    timeout = counts.get("timeout", 0)
    return {
        "mutants": len(found),
        **counts,
        "score": round(100 * killed / (killed + survived), 1) if killed + survived else None,
        "with_timeouts": round(100 * (killed + timeout) / (killed + timeout + survived), 1)
        if killed + timeout + survived
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    ap.add_argument("--list", action="store_true", help="print the modules and their tests")
    ap.add_argument("--children", type=int, default=2, help="parallel mutant processes (2)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per module (1800)")
    ap.add_argument("--fresh", action="store_true", help="forget cached results first")
    ap.add_argument("--survivors", action="store_true", help="show surviving mutants' diffs")
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="GLOB",
        help="test only the mutants whose names match (mutmut names, e.g. 'usam.train.x_check_*'); "
        "for a module too big for one sitting: the rest stay 'not checked'",
    )
    args = ap.parse_args(argv)
    if args.list:
        for name, (path, sel) in MODULES.items():
            print(f"{name:11s} {path:26s} {' '.join(sel)}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        print(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}", file=sys.stderr)
        return 2
    saved = WORK / "report.json"
    report = json.loads(saved.read_text()) if saved.exists() else {}
    for name in args.modules or list(MODULES):
        work = WORK / name
        if args.survivors:
            for mutant, status in results(work).items():
                if status == "survived":
                    print(mutmut(work, "show", mutant).stdout)
            continue
        work = prepare(name, args.fresh)
        start = time.perf_counter()
        try:
            run = mutmut(
                work,
                "run",
                "--max-children",
                str(args.children),
                *(args.only or []),
                timeout=args.timeout,
            )
        except subprocess.TimeoutExpired:
            print(f"{name}: stopped after {args.timeout:.0f} s; rerun to continue", file=sys.stderr)
        else:
            if run.returncode != 0:
                print(run.stdout[-3000:], run.stderr[-3000:], sep="\n", file=sys.stderr)
                print(f"{name}: mutmut failed (exit {run.returncode})", file=sys.stderr)
        found = results(work)
        report[name] = {
            "file": MODULES[name][0],
            **score(found),
            "survived": sorted(m for m, s in found.items() if s == "survived"),
            "seconds": round(time.perf_counter() - start),
        }
        report[name]["date"] = time.strftime("%Y-%m-%d")
        print(json.dumps({name: report[name]}), flush=True)
    if report and not args.survivors:
        saved.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
