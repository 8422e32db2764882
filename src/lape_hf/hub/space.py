"""A Hugging Face Space with the demo page of a published model: rendered from `space_template/`, uploaded in one
commit like a model (`scripts/push_to_hub.py --space ORG/NAME`).

The Space holds `app.py` (serves `lape_hf.demo` for the models listed in its card), `requirements.txt` (lape_hf's
runtime dependencies), `README.md` (the Space card: its metadata header names the SDK, the Gradio version and the
models) and a copy of the `lape_hf` package itself, so the Space runs without the package being on a registry.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, SpaceCard, SpaceCardData
from packaging.requirements import Requirement

from ..demo import DEMO_EXTRA_MISSING
from .publish import authenticated_api, check_repo_id, human_size, upload_failure

SPACE_TEMPLATE_DIR = Path(__file__).resolve().parent / "space_template"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/lape_hf, copied into the Space as lape_hf/
# In a source checkout (an editable install) the project file beside src/ is the one home of the dependencies and the
# package-data patterns; the installed metadata may predate an edit of it.
PROJECT_FILE = PACKAGE_DIR.parent.parent / "pyproject.toml"
SPACE_SDK = "gradio"
# The template the Space was rendered from stays out of the Space's copy of the package.
PACKAGE_EXCLUDED_PARTS = ("__pycache__", "space_template")


def private_model_warning(model_id: str) -> str:
    """What a Space needs to load a private model (said by the push script; the Space card says it too)."""
    return (
        f"warning: {model_id} is private: the Space can load it only with an HF_TOKEN secret that can read it "
        "(the Space's Settings -> Variables and secrets)."
    )


def gradio_version() -> str:
    """The installed Gradio version, pinned as the Space's `sdk_version` (the version the page was tested with)."""
    try:
        return importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"rendering a Space needs Gradio; {DEMO_EXTRA_MISSING}") from None


def source_project(project_file: Path = PROJECT_FILE) -> dict[str, Any] | None:
    """lape_hf's pyproject.toml when the package runs from a source checkout, else None (an installed wheel).

    It is read with tomllib (Python 3.11+) or tomli on 3.10; on 3.10 without tomli a checkout is refused rather than
    falling back to installed metadata that may be stale.
    """
    if not project_file.is_file():
        return None
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError(
                f"reading {project_file} on Python 3.10 needs tomli (pip install tomli), or use Python 3.11+."
            ) from None
    with project_file.open("rb") as stream:
        project = tomllib.load(stream)
    return project if project.get("project", {}).get("name") == "lape_hf" else None


def runtime_requirements(project_file: Path = PROJECT_FILE) -> list[str]:
    """lape_hf's own dependencies, extras left out: pyproject.toml's [project] dependencies in a source checkout,
    else the installed metadata. Requirements with a platform or Python marker are kept (pip evaluates them)."""
    project = source_project(project_file)
    lines = project["project"]["dependencies"] if project else importlib.metadata.requires("lape_hf") or []
    requirements = [Requirement(line) for line in lines]
    return [str(requirement) for requirement in requirements if not _needs_an_extra(requirement)]


def _needs_an_extra(requirement: Requirement) -> bool:
    """An optional dependency: its marker names `extra` (as metadata writes `extra == "demo"`)."""
    return requirement.marker is not None and re.search(r"\bextra\b", str(requirement.marker)) is not None


def package_files(package_dir: Path = PACKAGE_DIR, project_file: Path = PROJECT_FILE) -> dict[str, Path]:
    """Space path -> file, for the copy of the lape_hf package: what a wheel of it holds, nothing else.

    In a source checkout that is every *.py file plus pyproject.toml's package-data patterns (untracked notes, caches
    and other strays stay out); in an installed package, the files its metadata records.
    """
    project = source_project(project_file)
    if project is not None:
        patterns = [
            "**/*.py",
            *project.get("tool", {}).get("setuptools", {}).get("package-data", {}).get("lape_hf", []),
        ]
        found = {path for pattern in patterns for path in package_dir.glob(pattern) if path.is_file()}
    else:
        recorded = importlib.metadata.files("lape_hf") or []
        found = {Path(file.locate()) for file in recorded if file.parts[0] == "lape_hf" and file.suffix != ".pyc"}
    files = {}
    for path in sorted(found):
        relative = path.relative_to(package_dir)
        if not set(relative.parts) & set(PACKAGE_EXCLUDED_PARTS):
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
                lines.append(f"  {name:<40} {human_size(size):>10}")
        count = sum(name.startswith("lape_hf/") for name in self.files)
        lines.append(f"  {'lape_hf/ (' + str(count) + ' files of the package)':<40} {human_size(package_size):>10}")
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
    api = authenticated_api(api)
    operations = plan.operations()  # built before the Hub is asked, so a local failure is not reported as the Hub's
    step = "create the Space"
    try:
        api.create_repo(plan.repo_id, repo_type="space", space_sdk=SPACE_SDK, private=private, exist_ok=True)
        step = "commit the files"
        return api.create_commit(
            plan.repo_id, operations, commit_message="Upload the LapeViT demo page", repo_type="space"
        )
    except Exception as error:  # as in publish.upload
        raise upload_failure(f"the Space {plan.repo_id}", step, error) from error


__all__ = [
    "SpacePlan",
    "package_files",
    "prepare_space",
    "private_model_warning",
    "runtime_requirements",
    "upload_space",
]
