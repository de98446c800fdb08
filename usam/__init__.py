"""usam: fast uncertainty estimators for SAM 2."""

from pathlib import Path

# Absolute, so the stage apps also work when called from scripts (Hydra would otherwise
# look for a `usam.conf` Python package). `usam/conf` links to the repository's `conf/`.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")
