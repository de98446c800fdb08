"""Hydra override strings built by the tools themselves (folders passed between stages).

A value such as a folder comes from the user (`USAM_OUTPUTS`, `--root`) and may hold
anything a file name can: commas (a sweep to Hydra), spaces, brackets, quotes,
non-ASCII letters, `${` (an interpolation to OmegaConf). `quote` writes it so that Hydra's
override grammar and OmegaConf both give back exactly that string.
"""

from __future__ import annotations

import re
from pathlib import Path

# OmegaConf reads `${` as an interpolation; `\${` is a literal `${`, and backslashes right
# before it must then be doubled. Hydra's quoted strings treat a backslash as an escape
# only before a quote or at the end of the string: double those, escape the quotes.
_BEFORE_INTERPOLATION = re.compile(r"(\\*)\$\{")
_BEFORE_QUOTE_OR_END = re.compile(r"(\\*)('|\Z)")


def quote(value: str | Path) -> str:
    """`value` as a single-quoted Hydra override value that parses back to exactly `value`."""
    s = _BEFORE_INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", str(value))
    s = _BEFORE_QUOTE_OR_END.sub(lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), s)
    return f"'{s}'"


def override(key: str, value: str | Path) -> str:
    """`key='value'`, quoted as `quote` does."""
    return f"{key}={quote(value)}"


def quoted_list(values: list[str] | list[Path]) -> str:
    """`['a','b']`: a Hydra list of quoted strings."""
    return "[" + ",".join(quote(v) for v in values) + "]"
