"""Download SA-V from its link list (and optionally unpack it).

    python scripts/download_sav.py --input-file sav_links.tsv --output-dir data/sav --extract

The link list (from the SA-V download page) is tab-separated with a header row naming
the columns `file_name` and `cdn_link`. Files already complete are skipped, partial
ones resumed; a rerun after a failure picks up where it stopped. Exit status 1 if any
file failed (each failure is listed with its reason).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from usam.download import download, extract, is_archive, is_complete, is_extracted, safe_join
from usam.errors import UsamError

log = logging.getLogger("usam.download_sav")

COLUMNS = ("file_name", "cdn_link")


def read_links(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(file_name, cdn_link) rows, and (line label, reason) for rows that cannot be used."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate a BOM
            reader = csv.reader(f, delimiter="\t")
            try:
                rows = list(reader)
            except csv.Error as err:  # a field over csv's limit (128 KiB), a NUL byte, ...
                raise UsamError(
                    f"{path}:{reader.line_num}: not a link list line ({err}); pass the SA-V "
                    "link list (.tsv) with --input-file"
                ) from None
    except FileNotFoundError:
        raise UsamError(f"{path} not found; pass the SA-V link list with --input-file") from None
    except UnicodeDecodeError as err:
        raise UsamError(
            f"{path} is not a text file ({err}); pass the SA-V link list (.tsv)"
        ) from None
    if not rows:
        raise UsamError(f"{path} is empty; expected a header row with {' and '.join(COLUMNS)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise UsamError(
            f"{path}: header {header} lacks column(s) {missing}; expected a tab-separated "
            f"list with columns {' and '.join(COLUMNS)} (the SA-V link list)"
        )
    i_name, i_link = header.index("file_name"), header.index("cdn_link")
    links, bad, seen = [], [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(i_name, i_link) or not row[i_name].strip() or not row[i_link].strip():
            bad.append((f"{path.name}:{line}", "missing file_name or cdn_link"))
            continue
        name, link = row[i_name].strip(), row[i_link].strip()
        if name in seen:
            log.warning(
                "%s:%d: %s listed again (first on line %d); ignoring",
                path.name,
                line,
                name,
                seen[name],
            )
            continue
        seen[name] = line
        links.append((name, link))
    return links, bad


def fetch(name: str, url: str, out_dir: Path, *, unpack: bool, retries: int) -> tuple[str, str]:
    """Download (or skip) one file, then unpack it if asked. Returns (status, detail)."""
    dest = safe_join(out_dir, name)
    if unpack and is_archive(name) and not dest.exists() and is_extracted(dest, out_dir):
        return "skipped", "already extracted"  # archive deleted after unpacking: keep it so
    if is_complete(dest):
        status = "skipped"
    else:
        download(url, dest, retries=retries)
        status = "downloaded"
    detail = ""
    if unpack and is_archive(name):
        detail = "extracted" if extract(dest, out_dir) else "already extracted"
    return status, detail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-file", type=Path, required=True, help="SA-V link list (.tsv)")
    parser.add_argument("--output-dir", type=Path, required=True, help="where the files go")
    parser.add_argument(
        "--extract", action="store_true", help="unpack .tar/.zip files into --output-dir"
    )
    parser.add_argument(
        "--retries", type=int, default=5, help="retries per file without progress (default 5)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="files downloaded at once (default 1)"
    )
    args = parser.parse_args(argv)
    if args.workers < 1 or args.retries < 0:
        parser.error("--workers must be >= 1 and --retries >= 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    try:
        links, failed = read_links(args.input_file)
    except UsamError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    counts = {"downloaded": 0, "skipped": 0}
    extracted = 0

    def one(item: tuple[str, str]) -> tuple[str, str, str]:
        name, url = item
        try:
            return (
                name,
                *fetch(name, url, args.output_dir, unpack=args.extract, retries=args.retries),
            )
        except (UsamError, OSError) as err:  # one bad file must not stop the others
            return name, "failed", str(err)

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for name, status, detail in pool.map(one, links):
            if status == "failed":
                failed.append((name, detail))
                log.error("%s: %s", name, detail)
                continue
            counts[status] += 1
            extracted += detail == "extracted"

    print(
        f"{len(links)} files listed: {counts['downloaded']} downloaded, {counts['skipped']} skipped "
        f"(already complete), {extracted} extracted, {len(failed)} failed"
    )
    for name, reason in failed:
        print(f"  FAILED {name}: {reason}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
