"""Publishing a trained LapeViT directory to the Hugging Face Hub, and placing one in a local Hub cache.

Publishing is three steps, so that nothing reaches the Hub unless the whole model would work from it:

1. `check_model_directory` loads everything a Hub user will load (config, safetensors weights into the model class,
   image processor, labels, the remote-code files named by `auto_map`, `results.json`) and refuses the directory
   with every problem named when anything is missing or wrong.
2. `prepare_upload` renders the model card (`lape_hf.hub.model_card`) and fixes the exact files of the commit.
3. `upload` creates the repository (and branch) if needed and sends everything as one commit, which the Hub applies
   atomically: a failed upload leaves no partial set of files behind.

The token is never handled here: `HfApi` reads it from `HF_TOKEN` or the stored login (`hf auth login`).
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import filter_repo_objects, validate_repo_id
from transformers import AutoConfig, AutoImageProcessor

from ..export import GRAPH_FILE_NAMES
from ..models.lape_vit.configuration_lape_vit import LapeViTConfig
from ..models.lape_vit.modeling_lape_vit import LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher
from ..predict import MODEL_LOADING_ERRORS
from ..training.results import RESULTS_FILE, ResultsError, load_results
from .model_card import CardSource, render_model_card

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PROCESSOR_FILE = "preprocessor_config.json"
CARD_FILE = "README.md"
# What a Hub user without lape_hf needs in `auto_map`: the config class and the class `pipeline()` loads.
REQUIRED_AUTO_MAP = ("AutoConfig", "AutoModelForImageClassification")
CLASSIFIER_CLASSES = {
    cls.__name__: cls for cls in (LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher)
}
# Pickles can run code when loaded and the published weights are safetensors, so these are never uploaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# What is never uploaded, as `huggingface_hub` ignore patterns (fnmatch on the POSIX path; a trailing "/" means a
# folder's contents), with the reason the dry run gives.
# An ONNX export written into the model directory (scripts/export.py --output_dir MODEL_DIR/onnx) goes up with it.
ONNX_FILE = f"onnx/{GRAPH_FILE_NAMES['onnx']}"
IGNORE_PATTERNS: dict[str, tuple[str, ...]] = {
    "hidden or cache file": (".*", "*/.*", "__pycache__/", "*/__pycache__/*"),
    "intermediate Trainer checkpoint": ("checkpoint-*/",),
    "pickle file (the weights are published as safetensors)": tuple(f"*{suffix}" for suffix in PICKLE_SUFFIXES),
    "replaced by the rendered model card": (CARD_FILE,),
}
# Files the checks read: one that is a link to outside the directory would be checked but never uploaded.
CHECKED_FILES = (CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, PROCESSOR_FILE, RESULTS_FILE, "*.py", "*.safetensors")


class ModelDirectoryError(ValueError):
    """The directory cannot be published; `problems` names every missing or broken item."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{path} cannot be published (nothing was uploaded):\n{listing}")


class PublishError(RuntimeError):
    """The upload itself failed (no token, network, permissions); the message says what and what to do."""


# ---------------------------------------------------------------------------------------------------------------------
# 1. Checking a model directory
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckedModelDirectory:
    """A model directory that loads completely, with what the card and the commit need from it."""

    path: Path
    config: LapeViTConfig
    results: dict[str, Any] | None
    num_parameters: int
    files: tuple[str, ...]  # paths relative to `path` (POSIX), in upload order
    skipped: tuple[tuple[str, str], ...]  # (relative path, why it is not uploaded)


def check_model_directory(model_dir: str | Path) -> CheckedModelDirectory:
    """Load the directory the way a Hub user would and refuse it, naming every problem, unless all of it works."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelDirectoryError(path, [f"{path} is not a directory"])
    files, skipped = _files_to_upload(path)
    problems = _outside_link_problems(skipped)
    problems += _missing_files(path)
    raw_config = _read_json(path / CONFIG_FILE, problems)
    if raw_config is not None:
        problems += _auto_map_problems(path, raw_config)
    problems += _code_file_problems(path)
    if problems:  # loading would only repeat these problems less clearly
        raise ModelDirectoryError(path, problems)

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ModelDirectoryError(path, [f"{CONFIG_FILE} does not load: {error}"]) from error
    if not isinstance(config, LapeViTConfig):
        raise ModelDirectoryError(
            path, [f"{CONFIG_FILE} has model_type={config.model_type!r}; expected {LapeViTConfig.model_type!r}"]
        )
    problems += _label_problems(config)
    num_parameters, model_problems = _load_weights(path, config)
    problems += model_problems
    problems += _processor_problems(path, config)
    results = None
    try:
        results = load_results(path, config)
    except ResultsError as error:
        problems.append(str(error))
    if problems:
        raise ModelDirectoryError(path, problems)
    return CheckedModelDirectory(path, config, results, num_parameters, files, skipped)


def _missing_files(path: Path) -> list[str]:
    problems = []
    if not (path / CONFIG_FILE).is_file():
        problems.append(f"missing {CONFIG_FILE} (the model config; save the model with save_pretrained)")
    if (path / WEIGHTS_INDEX_FILE).is_file():
        index = _read_json(path / WEIGHTS_INDEX_FILE, problems) or {}
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            problems.append(f"{WEIGHTS_INDEX_FILE} lists no weight shards")
        problems += [
            f"missing weight shard {shard} (listed in {WEIGHTS_INDEX_FILE})"
            for shard in shards
            if not (path / shard).is_file()
        ]
    elif not (path / WEIGHTS_FILE).is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = (
            f" (found {', '.join(pickles)}: re-save with save_pretrained, which writes safetensors)" if pickles else ""
        )
        problems.append(f"missing safetensors weights {WEIGHTS_FILE}{hint}")
    if not (path / PROCESSOR_FILE).is_file():
        problems.append(
            f"missing image processor {PROCESSOR_FILE} "
            "(save lape_hf.models.lape_vit.image_processing_lape_vit.build_image_processor(config) beside the model)"
        )
    return problems


def _read_json(file: Path, problems: list[str]) -> dict[str, Any] | None:
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"{file.name} is not valid JSON: {error}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{file.name} must hold a JSON object")
        return None
    return data


def _auto_map_problems(path: Path, raw_config: Mapping[str, Any]) -> list[str]:
    """`auto_map` is what lets users without lape_hf load the model with `trust_remote_code=True`."""
    auto_map = raw_config.get("auto_map")
    if not isinstance(auto_map, dict):
        return [
            f"{CONFIG_FILE} has no auto_map (the custom code entry points); save the model after `import lape_hf`, "
            "which registers LapeViT for remote code"
        ]
    problems = []
    for auto_class in REQUIRED_AUTO_MAP:
        if auto_class not in auto_map:
            problems.append(f"{CONFIG_FILE} auto_map has no {auto_class!r} entry")
    for auto_class, reference in auto_map.items():
        if not isinstance(reference, str) or "." not in reference:
            problems.append(f"{CONFIG_FILE} auto_map[{auto_class!r}]={reference!r} is not 'module.ClassName'")
            continue
        if "--" in reference:  # code that lives in another Hub repository ("org/repo--module.Class")
            continue
        module, class_name = reference.rsplit(".", 1)
        code_file = path / f"{module}.py"
        if not code_file.is_file():
            problems.append(f"missing custom code file {code_file.name} (auto_map[{auto_class!r}]={reference!r})")
        elif class_name not in _defined_classes(code_file):
            problems.append(f"{code_file.name} does not define {class_name} (auto_map[{auto_class!r}])")
    return problems


def _defined_classes(code_file: Path) -> set[str]:
    try:
        tree = ast.parse(code_file.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return set()
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def _code_file_problems(path: Path) -> list[str]:
    """Remote code must be self-contained: it may import its sibling files, never lape_hf (absent on the Hub side)."""
    problems = []
    for code_file in sorted(path.glob("*.py")):
        try:
            tree = ast.parse(code_file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError) as error:
            problems.append(f"{code_file.name} is not valid Python: {error}")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0 and node.module:
                sibling = path / (node.module.replace(".", "/") + ".py")
                if not sibling.is_file():
                    problems.append(f"{code_file.name} imports .{node.module}, but {sibling.name} is missing")
            if any(name == "lape_hf" or name.startswith("lape_hf.") for name in _absolute_imports(node)):
                problems.append(f"{code_file.name} imports lape_hf, which Hub users without the package do not have")
    return problems


def _absolute_imports(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def _label_problems(config: LapeViTConfig) -> list[str]:
    id2label = config.id2label or {}
    if sorted(id2label) != list(range(config.num_labels)):
        return [f"{CONFIG_FILE} id2label must name the classes 0..{config.num_labels - 1}, got ids {sorted(id2label)}"]
    names = [id2label[index] for index in range(config.num_labels)]
    if names == [f"LABEL_{index}" for index in range(config.num_labels)]:
        return [
            f"{CONFIG_FILE} has only placeholder labels LABEL_0..LABEL_{config.num_labels - 1}; set id2label and "
            "label2id to the class names (the training script does this from the dataset's ClassLabel feature)"
        ]
    if len(set(names)) != len(names):
        return [f"{CONFIG_FILE} id2label has repeated class names: {names}"]
    if dict(config.label2id or {}) != {name: index for index, name in enumerate(names)}:
        return [f"{CONFIG_FILE} label2id is not the inverse of id2label"]
    return []


def _load_weights(path: Path, config: LapeViTConfig) -> tuple[int, list[str]]:
    """Load the safetensors weights into the class named by `architectures`: every parameter must be there."""
    architectures = config.architectures or []
    if len(architectures) != 1 or architectures[0] not in CLASSIFIER_CLASSES:
        return 0, [f"{CONFIG_FILE} architectures={architectures!r}; expected one of {sorted(CLASSIFIER_CLASSES)}"]
    model_class = CLASSIFIER_CLASSES[architectures[0]]
    try:
        model, info = model_class.from_pretrained(path, config=config, output_loading_info=True)
    except (*MODEL_LOADING_ERRORS, RuntimeError) as error:  # missing, truncated or mis-shaped weights
        return 0, [f"the weights do not load into {model_class.__name__}: {error}"]
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(map(str, info.get(kind) or ()))
        if keys:
            problems.append(f"the weights have {kind.replace('_', ' ')}: {', '.join(keys[:8])}")
    return model.num_parameters(), problems


def _processor_problems(path: Path, config: LapeViTConfig) -> list[str]:
    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as error:
        return [f"{PROCESSOR_FILE} does not load: {error}"]
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    size = dict(size or {})
    if "height" in size and (size["height"], size["width"]) != config.image_size_2d:
        height, width = config.image_size_2d
        return [
            f"the image processor makes {size['height']}x{size['width']} images but the model expects "
            f"{height}x{width}; rebuild it with lape_hf.models.lape_vit.build_image_processor(config)"
        ]
    return []


def _directory_entries(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Every file inside `path` (relative POSIX paths), and the links that are not followed, with why.

    `HfApi.upload_folder` would follow a link to a file anywhere on the disk; here a link is followed only when its
    target lies inside the directory, and a linked folder is never entered.
    """
    root = path.resolve()
    files, links = [], []
    for folder, folder_names, file_names in os.walk(path):  # followlinks=False: linked folders are not entered
        for name in sorted([*file_names, *folder_names]):
            entry = Path(folder) / name
            relative = entry.relative_to(path).as_posix()
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                links.append((relative, f"a link to {entry.resolve()}, outside the model directory"))
            elif entry.is_symlink() and entry.is_dir():
                links.append((relative, "a link to a folder (not followed)"))
            elif name in file_names and entry.is_file():
                files.append(relative)
    return sorted(files), links


def _files_to_upload(path: Path) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The files of the commit (everything `IGNORE_PATTERNS` lets through), and what is left out, with why."""
    files, skipped = _directory_entries(path)
    every_pattern = [pattern for patterns in IGNORE_PATTERNS.values() for pattern in patterns]
    kept = list(filter_repo_objects(files, ignore_patterns=every_pattern))
    for name in sorted(set(files) - set(kept)):
        reason = next(
            reason
            for reason, patterns in IGNORE_PATTERNS.items()
            if not list(filter_repo_objects([name], ignore_patterns=patterns))
        )
        skipped.append((name, reason))
    return tuple(kept), tuple(skipped)


def _outside_link_problems(skipped: tuple[tuple[str, str], ...]) -> list[str]:
    """A file the model needs that links outside the directory: refused, since the commit would lack it."""
    outside = {name: reason for name, reason in skipped if reason.endswith("outside the model directory")}
    return [
        f"{name} is {outside[name]}; copy the file into the directory (links to outside it are never uploaded)"
        for name in filter_repo_objects(list(outside), allow_patterns=CHECKED_FILES)
    ]


# ---------------------------------------------------------------------------------------------------------------------
# 2. The commit: files + card
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UploadPlan:
    """Exactly what would be committed to `repo_id`: the checked directory's files plus the rendered card."""

    repo_id: str
    model: CheckedModelDirectory
    card: ModelCard

    def repository_files(self) -> dict[str, Path | bytes]:
        """Path in the repository -> local file (or the card's bytes), in commit order."""
        files: dict[str, Path | bytes] = {name: self.model.path / name for name in self.model.files}
        files[CARD_FILE] = str(self.card).encode("utf-8")
        return files

    def operations(self) -> list[CommitOperationAdd]:
        """Fresh operations for `HfApi.create_commit` (which mutates them, so they are built per call)."""
        return [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(source) if isinstance(source, Path) else source)
            for name, source in self.repository_files().items()
        ]

    def describe(self) -> str:
        """The dry-run listing: every file with its size, and what is left out and why."""
        lines = [f"Files for {self.repo_id}:"]
        for name, source in self.repository_files().items():
            size = len(source) if isinstance(source, bytes) else source.stat().st_size
            note = "  (rendered model card)" if name == CARD_FILE else ""
            lines.append(f"  {name:<40} {human_size(size):>10}{note}")
        if self.model.skipped:
            lines.append("Not uploaded:")
            lines += [f"  {name:<40} {reason}" for name, reason in self.model.skipped]
        if self.model.results is None:
            lines.append(f"Note: no {RESULTS_FILE}, so the card has no model-index (no evaluation results).")
        return "\n".join(lines)


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def check_repo_id(repo_id: str) -> None:
    """A full 'namespace/name' id, since the card's usage code names the repository."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"Invalid repo_id {repo_id!r}: {error}") from error
    if repo_id.count("/") != 1:
        raise ValueError(f"repo_id={repo_id!r} must be 'namespace/name' (your user or organization, then the model).")


def prepare_upload(
    model_dir: str | Path,
    repo_id: str,
    *,
    template_path: str | Path,
    card_source: CardSource | None = None,
    space_id: str | None = None,
) -> UploadPlan:
    """Check the directory and render its card (linking to the demo Space `space_id` when given): raises before
    anything is sent when either fails."""
    check_repo_id(repo_id)
    if space_id is not None:
        check_repo_id(space_id)
    model = check_model_directory(model_dir)
    card = render_model_card(
        model.config,
        model.results,
        repo_id,
        template_path,
        source=card_source,
        num_parameters=model.num_parameters,
        onnx_file=ONNX_FILE if ONNX_FILE in model.files else None,
        space_id=space_id,
    )
    return UploadPlan(repo_id=repo_id, model=model, card=card)


# ---------------------------------------------------------------------------------------------------------------------
# 3. Upload
# ---------------------------------------------------------------------------------------------------------------------
def upload(
    plan: UploadPlan,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> CommitInfo:
    """Create the repository (and branch) if needed and commit the plan's files in one commit.

    `private` applies when the repository is created; an existing repository keeps its visibility. `api` defaults to
    `HfApi()`, which takes the token from HF_TOKEN or the stored login; without either, nothing is attempted.
    """
    api = authenticated_api(api)
    message = commit_message or f"Upload {plan.repo_id.split('/')[-1]} (LapeViT, pe_join={plan.model.config.pe_join})"
    step = "create the repository"
    try:
        api.create_repo(plan.repo_id, repo_type="model", private=private, exist_ok=True)
        if revision is not None and revision != "main":
            step = f"create the branch {revision!r}"
            api.create_branch(plan.repo_id, branch=revision, repo_type="model", exist_ok=True)
        step = "commit the files"
        return api.create_commit(
            plan.repo_id,
            plan.operations(),
            commit_message=message,
            repo_type="model",
            revision=revision,
        )
    except Exception as error:
        raise upload_failure(plan.repo_id, step, error) from error


def authenticated_api(api: HfApi | None = None) -> HfApi:
    """`api`, or an `HfApi()` that finds a token (HF_TOKEN or the stored login); without a token nothing is tried."""
    if api is not None:
        return api
    if get_token() is None:
        raise PublishError(
            "No Hugging Face token: set the HF_TOKEN environment variable or run `hf auth login`, then retry."
        )
    return HfApi()


def upload_failure(repo_id: str, step: str, error: Exception) -> PublishError:
    """The one report of a failed remote call of an upload. The transport's exception types differ between
    huggingface_hub versions, so every failure is reported alike, naming the step (the caller chains the cause)."""
    return PublishError(
        f"Upload to {repo_id} failed while trying to {step}: {type(error).__name__}: {error}. "
        "The files are sent as one commit, so none of them was published."
    )


__all__ = [
    "CheckedModelDirectory",
    "ModelDirectoryError",
    "PublishError",
    "UploadPlan",
    "authenticated_api",
    "check_model_directory",
    "check_repo_id",
    "human_size",
    "prepare_upload",
    "upload",
    "upload_failure",
]
