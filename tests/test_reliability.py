"""Issue 16, item by item: each bad or unusual input reproduced, and the message or behaviour asserted. A user error in
a script is one line on stderr and exit status 2 (Ctrl-C: 130); nothing is lost or left half-written."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from hub_helpers import save_tiny_checkpoint
from script_loader import load_script
from transformers import TrainerControl

from lape_hf import LapeViTForImageClassification
from lape_hf.analysis import save_figure
from lape_hf.atomic_files import atomic_write
from lape_hf.conversion.checkpoint_files import save_converted_model
from lape_hf.export import export_model
from lape_hf.training.output_dir import check_output_dir, save_model_atomically
from lape_hf.training.trainer import StopOnInterrupt

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = [
    "--preset=vit-lite-7/4",
    "--config_overrides=image_size=8,patch_size=4,hidden_size=16,num_hidden_layers=1,num_attention_heads=2,"
    "intermediate_size=32",
    "--torch_num_threads=1",
    "--dataloader_num_workers=0",
    "--disable_tqdm=true",
    "--eval_strategy=no",
    "--save_strategy=no",
    "--max_train_samples=32",
    "--max_eval_samples=16",
    "--per_device_train_batch_size=8",
]


def run_main(script: str, argv: list, capsys) -> tuple[int, str]:
    """`scripts/<script>.py` main in this process: (exit status, stderr)."""
    try:
        status = load_script(script).main([str(argument) for argument in argv])
    except SystemExit as exit_:  # a parser error
        status = exit_.code
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, error: str, *fragments: str) -> None:
    assert status == 2, error
    last = error.strip().splitlines()[-1]
    assert "Traceback" not in error and "error: " in last, error
    for fragment in fragments:
        assert fragment in last, last


def image(path: Path, value: int = 128, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(value).integers(0, 256, (size, size, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image(root / name / f"{index}.png", value=index + 7 * len(name))
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("reliability") / "model")


def damaged_copy(model_dir: Path, target: Path, damage: str) -> Path:
    shutil.copytree(model_dir, target)
    weights, config = target / "model.safetensors", target / "config.json"
    if damage == "no weights":
        weights.unlink()
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "corrupt config":
        config.write_text('{"model_type": "lape_vit", ')
    elif damage == "no image processor":
        (target / "preprocessor_config.json").unlink()
    return target


# ---------------------------------------------------------------------------------------------------------------------
# Data loss: a finished model is never silently replaced, and nothing is half-written
# ---------------------------------------------------------------------------------------------------------------------
def test_training_into_a_finished_model_is_refused_naming_it_and_leaves_it_unchanged(model_dir, tmp_path, capsys):
    output = shutil.copytree(model_dir, tmp_path / "done")
    before = {path.name: path.read_bytes() for path in output.iterdir() if path.is_file()}
    status, error = run_main("train", [*TINY_RUN, "--max_steps=1", f"--output_dir={output}"], capsys)
    assert_one_line_error(status, error, "already holds a finished model", "config.json", "--overwrite_output_dir")
    assert {path.name: path.read_bytes() for path in output.iterdir() if path.is_file()} == before


def test_overwrite_output_dir_replaces_the_finished_model(model_dir, tmp_path, capsys):
    output = shutil.copytree(model_dir, tmp_path / "done")
    old_weights = (output / "model.safetensors").read_bytes()
    argv = [*TINY_RUN, "--max_steps=1", f"--output_dir={output}", "--overwrite_output_dir"]
    assert run_main("train", argv, capsys)[0] == 0
    assert (output / "model.safetensors").read_bytes() != old_weights
    assert not list(tmp_path.glob(".done.saving*")), "the staging directory is removed"


@pytest.fixture(params=[0o022, 0o027], ids=["umask 022", "umask 027"])
def umask(request):
    """The process umask for the test: 022 (others may read), 027 (only the group may read)."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def modes(directory: Path) -> dict[str, str]:
    """Every path below `directory` (itself as ".") with its permission bits in octal."""
    paths = [directory, *directory.rglob("*")]
    return {str(path.relative_to(directory)): oct(stat.S_IMODE(path.stat().st_mode)) for path in paths}


def as_new_files(directory: Path, umask: int) -> dict[str, str]:
    """What `open()` and `mkdir` would have given each path under `umask`."""
    return {name: oct((0o777 if (directory / name).is_dir() else 0o666) & ~umask) for name in modes(directory)}


def test_a_trained_model_has_the_permissions_of_new_files(umask, tmp_path, capsys):
    # safetensors writes the weights through an owner-only temporary file; results.json goes through atomic_write.
    output = tmp_path / "model"
    assert run_main("train", [*TINY_RUN, "--max_steps=1", f"--output_dir={output}"], capsys)[0] == 0
    assert {"model.safetensors", "results.json", "predictions.json"} <= set(modes(output))
    assert modes(output) == as_new_files(output, umask)


def test_a_converted_model_and_an_export_have_the_permissions_of_new_files(umask, model_dir, tmp_path):
    converted = save_converted_model(LapeViTForImageClassification.from_pretrained(model_dir), tmp_path / "converted")
    assert modes(converted) == as_new_files(converted, umask)
    exported = export_model(str(model_dir), tmp_path / "exported", export_format="torch_export")
    assert modes(exported) == as_new_files(exported, umask)


def test_a_replacing_export_keeps_the_replaced_directorys_own_mode(umask, model_dir, tmp_path):
    exported = export_model(str(model_dir), tmp_path / "exported", export_format="torch_export")
    exported.chmod(0o2750)  # e.g. a group-shared folder
    export_model(str(model_dir), exported, export_format="torch_export", overwrite=True)
    assert modes(exported) == {**as_new_files(exported, umask), ".": oct(0o2750)}


def test_atomic_write_gives_a_new_file_the_umask_mode_and_keeps_a_replaced_files_mode(umask, tmp_path):
    with atomic_write(tmp_path / "new.json") as file:
        file.write("{}")
    private = tmp_path / "private.json"
    private.write_text("old")
    private.chmod(0o604)  # neither a temporary file's 0o600 nor a new file's mode under either umask
    with atomic_write(private) as file:
        file.write("new")
    assert {name: mode for name, mode in modes(tmp_path).items() if name != "."} == {
        "new.json": oct(0o666 & ~umask),
        "private.json": "0o604",
    }
    assert private.read_text() == "new"


def test_the_demo_replaces_only_its_own_output_and_says_so(model_dir, tmp_path, caplog):
    demo_output = shutil.copytree(model_dir, tmp_path / "demo")
    check_output_dir(str(demo_output), overwrite=False, demo_output_dir=str(demo_output))
    assert "Replacing the previous demo output" in caplog.text
    with pytest.raises(FileExistsError, match="already holds a finished model"):
        check_output_dir(str(demo_output), overwrite=False, demo_output_dir=str(tmp_path / "elsewhere"))


def test_an_error_before_training_leaves_no_empty_output_directory(tmp_path, capsys):
    output = tmp_path / "new" / "run"
    status, error = run_main("train", [*TINY_RUN, "--max_train_samples=0", f"--output_dir={output}"], capsys)
    assert_one_line_error(status, error, "max_train_samples=0 must be at least 1")
    assert not output.exists()


class _StagedSaveFails:
    """Stands in for a Trainer whose save_model writes the weights and then fails (a full disk)."""

    accelerator = SimpleNamespace(wait_for_everyone=lambda: None)

    def is_world_process_zero(self) -> bool:
        return True

    def save_model(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        Path(directory, "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")


def test_a_failed_final_save_leaves_no_half_written_model(tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    with pytest.raises(OSError, match="No space left"):
        save_model_atomically(_StagedSaveFails(), str(output))
    assert list(output.iterdir()) == [] and [path.name for path in tmp_path.iterdir()] == ["run"]


def test_a_figure_that_fails_to_render_leaves_no_file(tmp_path):
    class BrokenFigure:
        def savefig(self, stream, **kwargs):
            stream.write(b"\x89PNG half")
            raise RuntimeError("renderer failed")

    with pytest.raises(RuntimeError, match="renderer failed"):
        save_figure(BrokenFigure(), tmp_path / "maps" / "pe", ["png"])
    assert list((tmp_path / "maps").iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------------
# Silent wrong results
# ---------------------------------------------------------------------------------------------------------------------
def test_a_class_present_only_in_the_validation_folder_is_an_error(tmp_path, capsys):
    train_dir = image_folder(tmp_path / "train", {"cat": 4, "dog": 4})
    validation_dir = image_folder(tmp_path / "val", {"cat": 2, "dog": 2, "bird": 2})
    argv = [
        *TINY_RUN,
        f"--train_dir={train_dir}",
        f"--validation_dir={validation_dir}",
        f"--output_dir={tmp_path / 'o'}",
    ]
    status, error = run_main("train", argv, capsys)
    assert_one_line_error(status, error, "['bird']", "every class evaluated on must be trained on")
    assert not (tmp_path / "o").exists()


def test_a_non_finite_training_loss_stops_the_run_naming_the_step_and_saves_no_model(tmp_path, capsys):
    output = tmp_path / "run"
    argv = [*TINY_RUN, "--learning_rate=1e30", "--max_steps=8", "--weight_decay=0", f"--output_dir={output}"]
    status, error = run_main("train", argv, capsys)
    assert_one_line_error(status, error, "the training loss became", "at step", "no model was saved")
    step = int(error.split("at step ")[1].split(";")[0])
    assert 1 <= step <= 8
    assert not (output / "model.safetensors").exists() and not (output / "config.json").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Tracebacks for user errors: one line, exit status 2
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--image_mean", "0.5", "0.5"], "--image_mean takes 3 finite numbers"),
        (["--image_std", "0", "0", "0"], "--image_std values must be > 0"),
        (["--max_eval_samples=0"], "max_eval_samples=0 must be at least 1"),
        (["--dataset_name=nobody/no-such-dataset"], "Couldn't reach 'nobody/no-such-dataset'"),
    ],
)
def test_bad_training_values_are_refused_before_training(argv, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output = tmp_path / "run"
    status, error = run_main("train", [*TINY_RUN, *argv, f"--output_dir={output}"], capsys)
    assert_one_line_error(status, error, fragment)
    assert not output.exists()


@pytest.mark.parametrize(
    "layout,fragment",
    [
        ({"cat": 4}, "has 1 class folder with images (['cat']); a classifier needs at least two"),
        ({}, "it has no class folders (images directly in it have no class)"),
        ({"cat": 0, "dog": 0}, "its class folders ['cat', 'dog'] hold no images"),
    ],
    ids=["one class folder", "flat folder", "all class folders empty"],
)
def test_image_folders_without_two_classes_say_so(layout, fragment, tmp_path, capsys):
    train_dir = image_folder(tmp_path / "train", layout)
    if not layout:
        for index in range(4):
            image(train_dir / f"{index}.png", value=index)
    status, error = run_main("train", [*TINY_RUN, f"--train_dir={train_dir}", f"--output_dir={tmp_path / 'o'}"], capsys)
    assert_one_line_error(status, error, fragment)


@pytest.mark.parametrize(
    "damage", ["missing", "no weights", "truncated weights", "corrupt config", "no image processor"]
)
def test_predict_on_a_model_directory_that_cannot_load_is_one_line(damage, model_dir, tmp_path, capsys):
    target = tmp_path / "model" if damage == "missing" else damaged_copy(model_dir, tmp_path / "model", damage)
    status, error = run_main("predict", ["--model", target, image(tmp_path / "a.png")], capsys)
    assert_one_line_error(status, error, f"cannot load the model '{target}'")


def test_predict_refuses_an_unknown_device(model_dir, tmp_path, capsys):
    status, error = run_main("predict", ["--model", model_dir, "--device", "tpu9", image(tmp_path / "a.png")], capsys)
    assert_one_line_error(status, error, "--device='tpu9' is not a torch device")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo never",))


def _torch_saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name,content,fragment",
    [
        ("random.pth", np.random.default_rng(0).bytes(1000), "is not a readable PyTorch checkpoint"),
        ("text.pth", b"hello world\n" * 20, "neither a torch.save archive nor a pickle"),
        ("random.safetensors", np.random.default_rng(1).bytes(1000), "is not a readable safetensors file"),
        ("text.safetensors", b'{"a": 1}', "is not a readable safetensors file"),
        ("code.pth", _torch_saved({"model": _RunsCode()}), "it pickles posix.system"),
        ("plain-pickle.pth", pickle.dumps({"model": _RunsCode()}, protocol=2), "it pickles posix.system"),
    ],
)
def test_convert_checkpoint_on_files_that_are_no_checkpoint_is_one_line(name, content, fragment, tmp_path, capsys):
    checkpoint = tmp_path / name
    checkpoint.write_bytes(content)
    output = tmp_path / "out"
    status, error = run_main(
        "convert_checkpoint", ["--source", "official", "--checkpoint", checkpoint, "--output_dir", output], capsys
    )
    assert_one_line_error(status, error, fragment)
    assert not output.exists()


@pytest.mark.parametrize("script", ["push_to_hub", "visualize_pe"])
def test_truncated_weights_are_one_line_in_push_to_hub_and_visualize_pe(script, model_dir, tmp_path, capsys):
    damaged = damaged_copy(model_dir, tmp_path / "model", "truncated weights")
    extra = ["--repo_id", "me/model", "--dry_run"] if script == "push_to_hub" else ["--output_dir", tmp_path / "maps"]
    status, error = run_main(script, ["--model", damaged, *extra], capsys)
    assert_one_line_error(status, error, "weights")
    assert not (tmp_path / "maps").exists()


def test_visualize_pe_checks_its_output_directory_before_the_computation(model_dir, tmp_path, capsys, monkeypatch):
    script = load_script("visualize_pe")
    monkeypatch.setattr(script, "load_model", lambda *_: pytest.fail("the model was loaded before the check"))
    blocker = image(tmp_path / "a-file.png")
    status, error = run_main("visualize_pe", ["--model", model_dir, "--output_dir", blocker / "maps"], capsys)
    assert_one_line_error(status, error, "cannot write to the output directory")


# ---------------------------------------------------------------------------------------------------------------------
# Ctrl-C: stop after the current step, keep the last complete checkpoint, exit 130
# ---------------------------------------------------------------------------------------------------------------------
def test_sigint_is_turned_into_a_stop_after_the_current_step():
    callback, control = StopOnInterrupt(), TrainerControl()
    previous = signal.getsignal(signal.SIGINT)
    args = SimpleNamespace(save_strategy="steps")
    callback.on_train_begin(args, None, control)
    try:
        os.kill(os.getpid(), signal.SIGINT)  # delivered at once: no KeyboardInterrupt, a request
        assert callback.requested and not control.should_training_stop
        callback.on_step_end(args, None, control)
        assert control.should_training_stop and control.should_save
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        callback.on_train_end(args, None, control)
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_and_leaves_the_last_complete_checkpoint(tmp_path):
    output = tmp_path / "run"
    argv = [a for a in TINY_RUN if not a.startswith(("--save_strategy", "--dataloader_num_workers", "--max_train"))]
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        *argv,
        "--dataloader_num_workers=1",  # the worker starts while the signal may arrive
        "--save_strategy=steps",
        "--save_steps=2",
        "--max_steps=100000",
        f"--output_dir={output}",
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(output.glob("checkpoint-*/trainer_state.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 130, error
    assert error.strip().splitlines()[-1] == "interrupted"
    checkpoints = sorted(output.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    assert checkpoints and all((path / "trainer_state.json").is_file() for path in checkpoints)
    assert not (output / "config.json").exists(), "no final model after Ctrl-C"


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--frobnicate=1"], "Some specified arguments are not used by the HfArgumentParser: ['--frobnicate=1']"),
        (["--output_dir=/somewhere"], "--output_dir is set for each run"),
    ],
)
def test_compare_joins_refuses_bad_training_arguments_before_any_run(argv, fragment, tmp_path, capsys, monkeypatch):
    script = load_script("compare_joins")
    monkeypatch.setattr(script, "compare_joins", lambda *_: pytest.fail("a run started"))
    status, error = run_main("compare_joins", [f"--output_root={tmp_path}", *argv], capsys)
    assert_one_line_error(status, error, fragment)


def test_benchmark_checks_its_output_file_before_measuring(tmp_path, capsys, monkeypatch):
    script = load_script("benchmark")
    monkeypatch.setattr(script, "run_benchmark", lambda **_: pytest.fail("the benchmark ran before the check"))
    blocker = image(tmp_path / "a-file.png")
    status, error = run_main("benchmark", ["--output_file", blocker / "out.json"], capsys)
    assert_one_line_error(status, error, "cannot write to the output directory")
