"""A Hugging Face Space with the demo page of a published model: rendered from `space_template/`, uploaded in one
commit like a model (`scripts/push_to_hub.py --space ORG/NAME`).

The Space holds `app.py` (serves `lape_hf.demo` for the models listed in its card), `requirements.txt` (lape_hf's
runtime dependencies), `README.md` (the Space card: its metadata header names the SDK, the Gradio version and the
models) and a copy of the `lape_hf` package itself, so the Space runs without the package being on a registry.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import jinja2
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, SpaceCard, SpaceCardData, get_token
from packaging.requirements import Requirement

from .publish import PublishError, _human_size, check_repo_id

SPACE_TEMPLATE_DIR = Path(__file__).resolve().parent / "space_template"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/lape_hf, copied into the Space as lape_hf/
SPACE_SDK = "gradio"
# What the copy of the package leaves out: compiled caches, and the template the Space was rendered from.
PACKAGE_EXCLUDED_PARTS = ("__pycache__", "space_template")
PACKAGE_EXCLUDED_SUFFIXES = (".pyc", ".pyo")


def gradio_version() -> str:
    """The installed Gradio version, pinned as the Space's `sdk_version` (the version the page was tested with)."""
    try:
        return importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        raise ValueError("rendering a Space needs Gradio: pip install -e '.[demo]'") from None


def runtime_requirements() -> list[str]:
    """lape_hf's own dependencies (extras left out), as its installed metadata lists them: one home, pyproject."""
    requirements = [Requirement(line) for line in importlib.metadata.requires("lape_hf") or []]
    return [str(requirement) for requirement in requirements if requirement.marker is None]


def package_files() -> dict[str, Path]:
    """Space path -> file, for the copy of the lape_hf package (sources and package data)."""
    files = {}
    for path in sorted(PACKAGE_DIR.rglob("*")):
        relative = path.relative_to(PACKAGE_DIR)
        if path.is_file() and not set(relative.parts) & set(PACKAGE_EXCLUDED_PARTS):
            if path.suffix not in PACKAGE_EXCLUDED_SUFFIXES:
                files[f"lape_hf/{relative.as_posix()}"] = path
    return files


@dataclass(frozen=True)
class SpacePlan:
    """Exactly what would be committed to the Space `repo_id`."""

    repo_id: str
    card: SpaceCard
    files: dict[str, Path | bytes]  # Space path -> local file or rendered text

    def describe(self) -> str:
        """The dry-run listing: the rendered files with sizes, then the package copy in one line."""
        lines = [f"Files for the Space {self.repo_id}:"]
        package_size = 0
        for name, source in self.files.items():
            size = len(source) if isinstance(source, bytes) else source.stat().st_size
            if name.startswith("lape_hf/"):
                package_size += size
            else:
                lines.append(f"  {name:<40} {_human_size(size):>10}")
        count = sum(name.startswith("lape_hf/") for name in self.files)
        lines.append(f"  {'lape_hf/ (' + str(count) + ' files of the package)':<40} {_human_size(package_size):>10}")
        return "\n".join(lines)

    def operations(self) -> list[CommitOperationAdd]:
        return [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(source) if isinstance(source, Path) else source)
            for name, source in self.files.items()
        ]


def prepare_space(
    repo_id: str,
    model_ids: list[str],
    *,
    title: str | None = None,
    license: str = "apache-2.0",
    template_dir: Path = SPACE_TEMPLATE_DIR,
) -> SpacePlan:
    """Render the Space for `model_ids` (Hub ids; the first is the main model, the rest are compared with it)."""
    check_repo_id(repo_id)
    if not model_ids:
        raise ValueError("a Space needs at least one model id to show.")
    for model_id in model_ids:
        check_repo_id(model_id)
    title = title or f"{model_ids[0].split('/')[-1]} demo"
    card_data = SpaceCardData(
        title=title,
        sdk=SPACE_SDK,
        sdk_version=gradio_version(),
        app_file="app.py",
        license=license,
        models=list(model_ids),
        tags=["lape", "vision-transformer", "position-embedding"],
    )
    readme = (template_dir / "README.md").read_text(encoding="utf-8")
    card = SpaceCard.from_template(
        card_data, template_str=readme, title=title, model_id=model_ids[0], compare_ids=list(model_ids[1:])
    )
    requirements = jinja2.Template((template_dir / "requirements.txt").read_text(encoding="utf-8")).render(
        requirements="\n".join(runtime_requirements()), lape_hf_version=importlib.metadata.version("lape_hf")
    )
    files: dict[str, Path | bytes] = {
        "README.md": str(card).encode("utf-8"),
        "app.py": template_dir / "app.py",
        "requirements.txt": requirements.rstrip("\n").encode("utf-8") + b"\n",
        **package_files(),
    }
    return SpacePlan(repo_id, card, files)


def upload_space(plan: SpacePlan, *, private: bool = False, api: HfApi | None = None) -> CommitInfo:
    """Create the Space (Gradio SDK) if needed and commit the plan's files in one commit."""
    if api is None:
        if get_token() is None:
            raise PublishError(
                "No Hugging Face token: set the HF_TOKEN environment variable or run `hf auth login`, then retry."
            )
        api = HfApi()
    try:
        api.create_repo(plan.repo_id, repo_type="space", space_sdk=SPACE_SDK, private=private, exist_ok=True)
        return api.create_commit(
            plan.repo_id, plan.operations(), commit_message="Upload the LapeViT demo page", repo_type="space"
        )
    except Exception as error:  # as in publish.upload: every failure of the remote calls is reported alike
        raise PublishError(
            f"Upload of the Space {plan.repo_id} failed: {type(error).__name__}: {error}. "
            "The files are sent as one commit, so none of them was published."
        ) from error


__all__ = ["SpacePlan", "prepare_space", "upload_space"]
