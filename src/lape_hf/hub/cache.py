"""A local Hub cache entry: a model brought to an offline machine, and how loading by Hub id is tested offline."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path

from .publish import check_repo_id


def install_in_hub_cache(
    files: Mapping[str, Path | bytes], repo_id: str, cache_dir: str | Path, revision: str = "main"
) -> Path:
    """Place files in a Hub cache (`HF_HUB_CACHE` layout) as if `repo_id` had been downloaded; returns the snapshot.

    With `HF_HUB_OFFLINE=1` and that cache, `from_pretrained(repo_id)` and `pipeline(model=repo_id)` then resolve
    through the real Hub code path, which is how loading by Hub id is tested without a network, and how a model is
    brought to an offline machine (e.g. `install_in_hub_cache(plan.repository_files(), ...)`).
    """
    check_repo_id(repo_id)
    digest = hashlib.sha1(repo_id.encode())
    for name in sorted(files):
        source = files[name]
        digest.update(name.encode())
        digest.update(source if isinstance(source, bytes) else Path(source).read_bytes())
    commit_hash = digest.hexdigest()  # 40 hex digits, like a Git commit id
    repo_folder = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_folder / "snapshots" / commit_hash
    for name, source in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            target.write_bytes(source)
        else:
            shutil.copyfile(source, target)
    (repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs" / revision).write_text(commit_hash)
    return snapshot


__all__ = ["install_in_hub_cache"]
