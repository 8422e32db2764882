"""Publishing: which directories are accepted, exactly what would be committed, and that nothing reaches the Hub when
the directory is incomplete or the upload fails. The Hub API is a recording fake; no test touches the network."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hub_helpers import LABELS, TEMPLATE, save_tiny_checkpoint, tiny_results
from huggingface_hub import ModelCard, constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file, save_file
from script_loader import load_script

from lape_hf import LapeViTForImageClassification
from lape_hf.hub import (
    ModelDirectoryError,
    PublishError,
    check_model_directory,
    install_in_hub_cache,
    prepare_upload,
    publish,
    upload,
)
from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor

REPO_ID = "lape-test/tiny-digits"
MODEL_FILES = {
    "config.json",
    "model.safetensors",
    "configuration_lape_vit.py",
    "modeling_lape_vit.py",
    "preprocessor_config.json",
    "results.json",
}
SECRET_TOKEN = "hf_thisIsAFakeTokenThatMustNeverBePrinted"


class RecordingHubApi:
    """Stands in for `HfApi`: records every call; `fail_on` names a method that raises like a refused request."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail_on = fail_on

    def _record(self, name: str, args: tuple, kwargs: dict) -> None:
        self.calls.append((name, args, kwargs))
        if name == self.fail_on:
            response = SimpleNamespace(headers={}, request=None)  # the parts of an HTTP response the error reads
            raise HfHubHTTPError(f"403 Forbidden: you cannot write to {args[0]}", response=response)

    def create_repo(self, *args, **kwargs):
        self._record("create_repo", args, kwargs)

    def create_branch(self, *args, **kwargs):
        self._record("create_branch", args, kwargs)

    def create_commit(self, *args, **kwargs):
        self._record("create_commit", args, kwargs)
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{args[0]}/commit/0123abcd"})()

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return save_tiny_checkpoint(tmp_path / "model", results=tiny_results())


@pytest.fixture
def push_to_hub():
    """The script's `main`, loaded from scripts/push_to_hub.py."""
    return load_script("push_to_hub").main


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[RecordingHubApi]:
    """Every `HfApi()` the code creates is a recording fake (listed here); a token is present in the environment."""
    created: list[RecordingHubApi] = []

    def make_api(*args, **kwargs) -> RecordingHubApi:
        created.append(RecordingHubApi())
        return created[-1]

    monkeypatch.setattr(publish, "HfApi", make_api)
    monkeypatch.setenv("HF_TOKEN", SECRET_TOKEN)
    return created


# ---------------------------------------------------------------------------------------------------------------------
# What is accepted
# ---------------------------------------------------------------------------------------------------------------------
def test_a_complete_directory_is_accepted_with_every_file_it_needs(model_dir: Path):
    checked = check_model_directory(model_dir)
    assert set(checked.files) == MODEL_FILES
    assert checked.results == tiny_results()
    expected_parameters = LapeViTForImageClassification.from_pretrained(model_dir).num_parameters()
    assert checked.num_parameters == expected_parameters
    assert checked.config.id2label == dict(enumerate(LABELS))


def test_training_leftovers_are_not_uploaded(model_dir: Path):
    (model_dir / "checkpoint-500").mkdir()
    (model_dir / "checkpoint-500" / "optimizer.pt").write_bytes(b"pickle")
    (model_dir / "training_args.bin").write_bytes(b"pickle")
    (model_dir / ".cache").mkdir()
    (model_dir / ".cache" / "upload.lock").write_text("")
    (model_dir / "README.md").write_text("an old card")
    (model_dir / "runs").mkdir()
    (model_dir / "runs" / "events.out.tfevents.1").write_bytes(b"tensorboard")

    checked = check_model_directory(model_dir)

    assert set(checked.files) == MODEL_FILES | {"runs/events.out.tfevents.1"}
    skipped = dict(checked.skipped)
    assert set(skipped) == {"checkpoint-500/optimizer.pt", "training_args.bin", ".cache/upload.lock", "README.md"}
    assert "pickle" in skipped["training_args.bin"]
    assert "model card" in skipped["README.md"]


def test_a_directory_without_results_is_publishable_and_says_so(tmp_path: Path):
    model_dir = save_tiny_checkpoint(tmp_path / "model", results=None)
    plan = prepare_upload(model_dir, REPO_ID, template_path=TEMPLATE)
    assert plan.model.results is None
    assert "results.json" not in plan.repository_files()
    assert "no model-index" in plan.describe()


# ---------------------------------------------------------------------------------------------------------------------
# What is refused, each problem named
# ---------------------------------------------------------------------------------------------------------------------
def _remove(name: str):
    return lambda path: (path / name).unlink()


def _edit_json(name: str, edit):
    def apply(path: Path) -> None:
        data = json.loads((path / name).read_text())
        edit(data)
        (path / name).write_text(json.dumps(data))

    return apply


def _overwrite(name: str, text: str):
    def apply(path: Path) -> None:
        (path / name).write_text(text)

    return apply


def _pickle_weights_only(path: Path) -> None:
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"pickle")


def _drop_a_weight(path: Path) -> str:
    """Remove the last layer's parameter with the alphabetically last name; the refusal must name it."""
    state = load_file(path / "model.safetensors")
    victim = max(key for key in state if ".layers.2." in key)
    del state[victim]
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return f"missing keys: {victim}"


def _wrong_size_processor(path: Path) -> None:
    config = LapeViTForImageClassification.config_class.from_pretrained(path)
    config.image_size = 64
    build_image_processor(config).save_pretrained(path)


def _remote_code_imports_lape_hf(path: Path) -> None:
    code = (path / "modeling_lape_vit.py").read_text()
    (path / "modeling_lape_vit.py").write_text(
        "from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor\n" + code
    )


REFUSALS = {
    "no weights": (_remove("model.safetensors"), "missing safetensors weights model.safetensors"),
    "pickle weights": (_pickle_weights_only, "found pytorch_model.bin"),
    "no config": (_remove("config.json"), "missing config.json"),
    "no processor": (_remove("preprocessor_config.json"), "missing image processor preprocessor_config.json"),
    "no modeling code": (_remove("modeling_lape_vit.py"), "missing custom code file modeling_lape_vit.py"),
    "no configuration code": (_remove("configuration_lape_vit.py"), "missing custom code file configuration_lape_vit"),
    "no auto_map": (_edit_json("config.json", lambda c: c.pop("auto_map")), "config.json has no auto_map"),
    "auto_map without the classifier": (
        _edit_json("config.json", lambda c: c["auto_map"].pop("AutoModelForImageClassification")),
        "auto_map has no 'AutoModelForImageClassification' entry",
    ),
    "a config value the model refuses": (
        _edit_json("config.json", lambda c: c.update(pe_join="lape_v2")),
        "config.json does not load: pe_join='lape_v2' is not supported; allowed: 'lape'",
    ),
    "placeholder labels": (
        _edit_json(
            "config.json",
            lambda c: c.update(id2label={str(i): f"LABEL_{i}" for i in range(3)}, label2id={}),
        ),
        "placeholder labels LABEL_0..LABEL_2",
    ),
    "a weight missing": (_drop_a_weight, None),  # names the dropped key
    "processor of another size": (_wrong_size_processor, "makes 64x64 images but the model expects 32x32"),
    "remote code importing lape_hf": (_remote_code_imports_lape_hf, "modeling_lape_vit.py imports lape_hf"),
    "results of another model": (
        _edit_json("results.json", lambda r: r.update(pe_join="add")),
        "results.json says pe_join='add' but config.json has 'lape'",
    ),
    "results with a percentage": (
        _edit_json("results.json", lambda r: r["metrics"].update(eval_accuracy=81.4)),
        "metrics['eval_accuracy']=81.4 must be a fraction in [0, 1]",
    ),
    "results without a dataset": (
        _edit_json("results.json", lambda r: r.pop("dataset")),
        "results.json needs a 'dataset' object",
    ),
    "results that are not JSON": (_overwrite("results.json", "{"), "results.json is not valid JSON"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_an_incomplete_directory_is_refused_naming_the_problem(model_dir: Path, case: str):
    break_directory, expected = REFUSALS[case]
    expected = break_directory(model_dir) or expected
    with pytest.raises(ModelDirectoryError) as refusal:
        check_model_directory(model_dir)
    assert expected in str(refusal.value)
    assert "nothing was uploaded" in str(refusal.value)


def test_every_missing_item_is_named_at_once(model_dir: Path):
    (model_dir / "model.safetensors").unlink()
    (model_dir / "preprocessor_config.json").unlink()
    with pytest.raises(ModelDirectoryError) as refusal:
        check_model_directory(model_dir)
    assert len(refusal.value.problems) == 2
    assert "model.safetensors" in refusal.value.problems[0]
    assert "preprocessor_config.json" in refusal.value.problems[1]


@pytest.mark.parametrize("case", ["no weights", "no auto_map", "a weight missing"])
def test_the_script_refuses_an_incomplete_directory_before_touching_the_hub(
    model_dir: Path, push_to_hub, fake_hub, capsys, case: str
):
    break_directory, expected = REFUSALS[case]
    expected = break_directory(model_dir) or expected
    status = push_to_hub([str(model_dir), "--repo_id", REPO_ID])
    assert status == 2
    assert expected in capsys.readouterr().err
    assert fake_hub == [], "no Hub client may even be created for a refused directory"


@pytest.mark.parametrize("repo_id", ["tiny-digits", "org/name/extra", "org/bad name", "org/--x"])
def test_a_repo_id_must_be_namespace_slash_name(model_dir: Path, repo_id: str):
    with pytest.raises(ValueError, match="repo_id"):
        prepare_upload(model_dir, repo_id, template_path=TEMPLATE)


# ---------------------------------------------------------------------------------------------------------------------
# Exactly what is committed
# ---------------------------------------------------------------------------------------------------------------------
def test_the_commit_holds_the_model_files_and_the_card(model_dir: Path):
    plan = prepare_upload(model_dir, REPO_ID, template_path=TEMPLATE)
    api = RecordingHubApi()
    upload(plan, private=True, revision="experiments", commit_message="Add the tiny model", api=api)

    assert api.names == ["create_repo", "create_branch", "create_commit"]
    _, args, kwargs = api.calls[0]
    assert args == (REPO_ID,) and kwargs == {"repo_type": "model", "private": True, "exist_ok": True}
    _, args, kwargs = api.calls[1]
    assert args == (REPO_ID,) and kwargs["branch"] == "experiments" and kwargs["exist_ok"] is True
    _, (repo_id, operations), kwargs = api.calls[2]
    assert repo_id == REPO_ID
    assert kwargs == {"commit_message": "Add the tiny model", "repo_type": "model", "revision": "experiments"}

    by_path = {operation.path_in_repo: operation for operation in operations}
    assert set(by_path) == MODEL_FILES | {"README.md"}
    for name in MODEL_FILES:  # each local file is sent as is (the hash the Hub will see is the file's)
        assert by_path[name].path_or_fileobj == str(model_dir / name)
        assert by_path[name].upload_info.sha256.hex() == hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
    card = ModelCard(by_path["README.md"].path_or_fileobj.decode("utf-8"))
    assert card.data.eval_results[0].metric_value == tiny_results()["metrics"]["eval_accuracy"]
    assert f'model="{REPO_ID}"' in card.text


def test_a_commit_to_main_creates_no_branch_and_has_a_default_message(model_dir: Path):
    plan = prepare_upload(model_dir, REPO_ID, template_path=TEMPLATE)
    api = RecordingHubApi()
    upload(plan, api=api)
    assert api.names == ["create_repo", "create_commit"]
    assert api.calls[0][2]["private"] is False
    assert api.calls[1][2]["commit_message"] == "Upload tiny-digits (LapeViT, pe_join=lape)"


def test_a_failed_upload_is_a_clear_error(model_dir: Path):
    plan = prepare_upload(model_dir, REPO_ID, template_path=TEMPLATE)
    with pytest.raises(PublishError, match="commit the files: HfHubHTTPError: 403 Forbidden") as failure:
        upload(plan, api=RecordingHubApi(fail_on="create_commit"))
    assert "none of them was published" in str(failure.value)
    assert isinstance(failure.value.__cause__, HfHubHTTPError)


def test_the_script_reports_a_failed_upload_without_printing_the_token(
    model_dir: Path, push_to_hub, fake_hub, monkeypatch: pytest.MonkeyPatch, capsys
):
    def refusing_api(*args, **kwargs) -> RecordingHubApi:
        fake_hub.append(RecordingHubApi(fail_on="create_repo"))
        return fake_hub[-1]

    monkeypatch.setattr(publish, "HfApi", refusing_api)
    status = push_to_hub([str(model_dir), "--repo_id", REPO_ID])
    output = capsys.readouterr()
    assert status == 1
    assert f"Upload to {REPO_ID} failed while trying to create the repository" in output.err
    assert SECRET_TOKEN not in output.out + output.err
    assert fake_hub[0].names == ["create_repo"]


def test_the_script_publishes_through_the_hub_api(model_dir: Path, push_to_hub, fake_hub, capsys):
    status = push_to_hub([str(model_dir), "--repo_id", REPO_ID, "--private", "--commit_message", "v1"])
    output = capsys.readouterr()
    assert status == 0
    assert f"Published 7 files to https://huggingface.co/{REPO_ID}/commit/" in output.out
    assert SECRET_TOKEN not in output.out + output.err
    (api,) = fake_hub
    assert api.names == ["create_repo", "create_commit"]
    assert api.calls[0][2]["private"] is True


def test_without_a_token_nothing_is_attempted(model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(publish, "HfApi", lambda *a, **k: pytest.fail("no Hub client without a token"))
    plan = prepare_upload(model_dir, REPO_ID, template_path=TEMPLATE)
    with pytest.raises(PublishError, match="set the HF_TOKEN environment variable or run `hf auth login`"):
        upload(plan)


def test_dry_run_prints_the_files_and_the_card_and_uploads_nothing(model_dir: Path, push_to_hub, fake_hub, capsys):
    (model_dir / "training_args.bin").write_bytes(b"pickle")
    status = push_to_hub([str(model_dir), "--repo_id", REPO_ID, "--dry-run"])
    output = capsys.readouterr().out
    assert status == 0
    assert fake_hub == []
    for name in MODEL_FILES | {"README.md"}:
        assert f"  {name} " in output
    assert "Not uploaded:\n  training_args.bin" in output
    assert "pipeline_tag: image-classification" in output and "## Citation" in output
    assert f"Dry run: nothing was uploaded to {REPO_ID}." in output


def test_the_script_names_a_bad_card_source(model_dir: Path, push_to_hub, fake_hub, tmp_path: Path, capsys):
    source = tmp_path / "card.yaml"
    source.write_text("title: Tiny\nlicence: mit\n")
    assert push_to_hub([str(model_dir), "--repo_id", REPO_ID, "--card_source", str(source), "--dry-run"]) == 2
    assert "unknown key(s) ['licence']" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# A local Hub cache entry
# ---------------------------------------------------------------------------------------------------------------------
def test_install_in_hub_cache_makes_the_hub_layout_that_downloads_resolve(model_dir: Path, tmp_path: Path):
    plan = prepare_upload(model_dir, REPO_ID, template_path=TEMPLATE)
    cache = tmp_path / "hub"
    snapshot = install_in_hub_cache(plan.repository_files(), REPO_ID, cache)

    repo_folder = cache / "models--lape-test--tiny-digits"
    commit_hash = (repo_folder / "refs" / "main").read_text()
    assert snapshot == repo_folder / "snapshots" / commit_hash and len(commit_hash) == 40
    assert {p.name for p in snapshot.iterdir()} == MODEL_FILES | {"README.md"}
    resolved = hf_hub_download(REPO_ID, "model.safetensors", cache_dir=cache, local_files_only=True)
    assert Path(resolved) == snapshot / "model.safetensors"
    weights = load_file(resolved)
    original = load_file(model_dir / "model.safetensors")
    assert all(torch.equal(weights[key], original[key]) for key in original)


# ---------------------------------------------------------------------------------------------------------------------
# Links: nothing from outside the model directory is ever uploaded
# ---------------------------------------------------------------------------------------------------------------------
def test_a_link_to_a_file_outside_the_directory_is_skipped_and_named(model_dir: Path, tmp_path: Path):
    secret = tmp_path / "outside" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("private key")
    (model_dir / "notes.txt").symlink_to(secret)
    (model_dir / "linked-folder").symlink_to(secret.parent, target_is_directory=True)
    (model_dir / "labels-copy.json").symlink_to(model_dir / "config.json")  # inside: an ordinary file to upload
    checked = check_model_directory(model_dir)
    skipped = dict(checked.skipped)
    assert "notes.txt" not in checked.files and "outside the model directory" in skipped["notes.txt"]
    assert str(secret.resolve()) in skipped["notes.txt"]
    assert not any(name.startswith("linked-folder") for name in checked.files)
    assert "linked-folder" in skipped
    assert "labels-copy.json" in checked.files
    plan = prepare_upload(model_dir, REPO_ID, template_path=TEMPLATE)
    sources = [op.path_or_fileobj for op in plan.operations() if isinstance(op.path_or_fileobj, str)]
    assert sources and all(Path(source).resolve().is_relative_to(model_dir.resolve()) for source in sources)


def test_a_needed_file_linking_outside_the_directory_is_refused(model_dir: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere.json"
    (model_dir / "preprocessor_config.json").rename(elsewhere)
    (model_dir / "preprocessor_config.json").symlink_to(elsewhere)
    with pytest.raises(
        ModelDirectoryError, match="preprocessor_config.json is a link to .*outside the model directory"
    ):
        check_model_directory(model_dir)


def test_the_dry_run_names_the_skipped_link(model_dir: Path, push_to_hub, fake_hub, tmp_path: Path, capsys):
    (tmp_path / "secret.txt").write_text("secret")
    (model_dir / "secret.txt").symlink_to(tmp_path / "secret.txt")
    assert push_to_hub(["--model", str(model_dir), "--repo_id", REPO_ID, "--dry_run"]) == 0
    output = capsys.readouterr().out
    assert "Not uploaded:" in output and "secret.txt" in output.split("Not uploaded:")[1].split("---")[0]
    assert "outside the model directory" in output
    assert fake_hub == []
