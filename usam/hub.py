"""SAM 2 checkpoints through the Hugging Face hub, as SAM 2 itself loads them.

`SAM2ImagePredictor.from_pretrained("facebook/sam2.1-hiera-large")` downloads
`sam2.1_hiera_large.pt` from that model repository with `huggingface_hub.hf_hub_download`
(its cache, resumed downloads, `HF_HUB_OFFLINE`, `HF_HUB_CACHE`) and builds it from the
packaged config. usam finds the same ids in usam.registry, whose rows agree with sam2's
`build_sam.HF_MODEL_ID_TO_FILENAMES` (a test checks), and takes the file's SHA-256 from the
hub: large files are stored by Git LFS, whose object id is the SHA-256 of the content and
names the blob in the cache, so the loader can verify it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from usam import registry
from usam.errors import UsamError

_HEX64 = re.compile(r"[0-9a-f]{64}")


def looks_like_model_id(name: str | Path) -> bool:
    """A hub id ("owner/name") rather than a local file: no such path here, one slash, and
    no checkpoint suffix (a missing checkpoints/x.pt stays a missing file)."""
    text = str(name)
    return (
        not Path(text).exists()
        and bool(re.fullmatch(r"[\w.-]+/[\w.-]+", text))
        and not text.endswith((".pt", ".pth", ".ckpt", ".safetensors"))
    )


def hub_sha256(path: str | Path) -> str | None:
    """The SHA-256 the hub recorded for a cached file: its LFS blob's name, when it has one."""
    blob = Path(os.path.realpath(path)).name
    return blob if _HEX64.fullmatch(blob) else None


def download(
    repo_id: str, *, cache_dir: str | Path | None = None, local_files_only: bool = False
) -> tuple[Path, str, str, str | None]:
    """(cached checkpoint, version, size, hub sha256) of a SAM 2 hub id; downloads if needed."""
    parsed = registry.parse_hub_id(repo_id)
    if parsed is None:
        known = [r.hub_id for r in registry.CHECKPOINTS.values() if r.size in ("tiny", "large")]
        raise UsamError(
            f"{repo_id!r} is neither a checkpoint file here nor a SAM 2 model id on the hub "
            f"(facebook/sam2.1-hiera-<tiny|small|base-plus|large>, facebook/sam2-hiera-..., "
            f"e.g. {', '.join(known)})"
        )
    version, size = parsed
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:
        raise UsamError(
            f"loading {repo_id} from the hub needs huggingface_hub: pip install huggingface_hub"
        ) from None
    filename = registry.lookup(version, size).file
    try:
        path = hf_hub_download(
            repo_id=repo_id,
            filename=filename,
            cache_dir=None if cache_dir is None else str(cache_dir),
            local_files_only=local_files_only,
        )
    except LocalEntryNotFoundError as err:
        raise UsamError(
            f"{repo_id}/{filename} is not in the Hugging Face cache and the hub cannot be reached "
            f"({str(err).splitlines()[0]}); connect (unset HF_HUB_OFFLINE) or pass a local "
            "checkpoint path"
        ) from None
    except (RepositoryNotFoundError, EntryNotFoundError) as err:
        raise UsamError(
            f"{repo_id}/{filename} not on the hub: {str(err).splitlines()[0]}"
        ) from None
    except (HfHubHTTPError, OSError) as err:
        raise UsamError(f"{repo_id}/{filename}: download failed ({err}); run it again") from None
    return Path(path), version, size, hub_sha256(path)
