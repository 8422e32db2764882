"""The recipes in recipes/: each parses with train.py's parser the same way as a file and as a command line, states the
paper's numbers, maps the reference schedules and RandAugment strength, and trains for 2 steps on a tiny generated
dataset with the columns and splits of the real one (the real datasets are not reachable here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from script_loader import load_script
from transformers import HfArgumentParser, get_scheduler

from lape_hf.training import ARGUMENT_CLASSES
from lape_hf.training.argument_files import arguments_from_file, as_command_line, read_argument_file
from lape_hf.training.fashion_mnist import FASHION_MNIST_LABELS

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
PAPER_RECIPES = [recipe for recipe in RECIPES if not recipe.name.startswith("fashion-mnist")]
# ICCV 2023, Tables 1 and 2 (docs: the method page): add -> LaPE.
PAPER_NUMBERS = {
    "cifar10-vit-lite-7-4": ("93.45", "94.29"),
    "cifar100-vit-lite-7-4": ("74.98", "75.53"),
    "cifar10-cct-7-3x1": ("96.03", "96.53"),
    "cifar100-cct-7-3x1": ("80.93", "81.99"),
    "imagenet-deit-tiny": ("71.54", "73.11"),
    "imagenet-deit-small": ("80.00", "80.54"),
}
# Image column, label column, number of classes, splits, image size of a tiny stand-in for each dataset.
DATASET_STRUCTURES = {
    "uoft-cs/cifar10": ("img", "label", 10, ("train", "test"), (32, 32)),
    "uoft-cs/cifar100": ("img", "fine_label", 100, ("train", "test"), (32, 32)),
    "ILSVRC/imagenet-1k": ("image", "label", 1000, ("train", "validation"), (60, 45)),
    "fashion-mnist": ("image", "label", 10, ("train", "test"), (28, 28)),
}
# Smaller DeiT models for the default suite (the full 224 px, 12-layer 2-step runs are marked slow).
SMALL_DEIT = "--config_overrides=image_size=32,patch_size=8,num_hidden_layers=2"


def parse_recipe(recipe: Path, *extra: str) -> tuple:
    return HfArgumentParser(ARGUMENT_CLASSES).parse_args_into_dataclasses(args=[*arguments_from_file(recipe), *extra])


def test_every_paper_setting_has_a_recipe():
    assert sorted(recipe.stem for recipe in PAPER_RECIPES) == sorted(PAPER_NUMBERS)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_a_recipe_as_a_command_line_parses_like_its_typed_values(recipe):
    """The one reader's command line and HfArgumentParser's typed reading of the same mapping agree (a YAML value
    that would stay a string, such as 1e-5, or a mapping that would not survive the command line, shows here)."""
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    typed = parser.parse_dict(read_argument_file(recipe))
    from_argv = parser.parse_args_into_dataclasses(args=arguments_from_file(recipe))
    for expected, got in zip(typed, from_argv, strict=True):
        assert got == expected


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda path: path.name)
def test_a_paper_recipe_states_the_papers_numbers_and_its_cost(recipe):
    add, lape = PAPER_NUMBERS[recipe.stem]
    text = recipe.read_text()
    assert f"add {add} %, LaPE {lape} %." in text
    assert "NOT reproduced here" in text and "estimate, not measured" in text
    assert "Not supported by this trainer, and what that changes:" in text


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda path: path.name)
def test_the_results_page_quotes_the_same_paper_numbers_as_the_recipe(recipe):
    """docs/results.md's table of recipes repeats the paper's numbers for readers; they must be the recipe's."""
    add, lape = PAPER_NUMBERS[recipe.stem]
    rows = [line for line in (ROOT / "docs" / "results.md").read_text().splitlines() if f"`{recipe.name}`" in line]
    assert len(rows) == 1, f"docs/results.md has {len(rows)} table rows for {recipe.name}"
    assert f"| {add} → {lape} |" in rows[0]


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda path: path.name)
def test_a_paper_recipe_trains_lape_and_the_command_line_switches_to_add(recipe):
    model, data, augmentation, training, run = parse_recipe(recipe)
    assert model.pe_join == "lape" and model.position_embedding_type == "learnable"
    assert parse_recipe(recipe, "--pe_join=add")[0].pe_join == "add"
    assert training.num_train_epochs == 300 and training.max_grad_norm == 0.0
    assert training.load_best_model_at_end and training.metric_for_best_model == "accuracy"
    assert augmentation.rand_augment and augmentation.rand_augment_magnitude == 27
    assert (augmentation.mixup, augmentation.cutmix, augmentation.random_erasing) == (0.8, 1.0, 0.25)
    assert data.dataset_name in DATASET_STRUCTURES and data.max_eval_samples is None  # the full evaluation split


def _learning_rates(recipe: Path, steps_per_epoch: int) -> list[float]:
    training = parse_recipe(recipe)[3]
    total = int(training.num_train_epochs) * steps_per_epoch
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=training.learning_rate)
    scheduler = get_scheduler(
        training.lr_scheduler_type,
        optimizer,
        num_warmup_steps=training.get_warmup_steps(total),
        num_training_steps=total,
        scheduler_specific_kwargs=training.lr_scheduler_kwargs,
    )
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    ("stem", "warmup_lr", "peak_lr", "warmup_epochs"),
    # Compact Transformers' configs/datasets/cifar10.yml and cifar100.yml; DeiT's main.py (lr 5e-4 x 1024 / 512).
    [
        ("cifar10-cct-7-3x1", 1e-5, 5.5e-4, 10),
        ("cifar100-vit-lite-7-4", 1e-6, 6e-4, 10),
        ("imagenet-deit-tiny", 1e-6, 1e-3, 5),
    ],
)
def test_the_schedule_warms_up_from_the_reference_warmup_lr_and_decays_to_min_lr(
    stem, warmup_lr, peak_lr, warmup_epochs
):
    steps_per_epoch = 4  # a short stand-in for 391 (CIFAR) or 1251 (ImageNet) steps: the curve is the same
    rates = _learning_rates(ROOT / "recipes" / f"{stem}.yaml", steps_per_epoch)
    warmup_steps = warmup_epochs * steps_per_epoch
    assert rates[0] == pytest.approx(warmup_lr, rel=1e-3)
    assert max(rates) == pytest.approx(peak_lr, rel=1e-6) and rates.index(max(rates)) == warmup_steps - 1
    assert rates[-1] == pytest.approx(1e-5, rel=0.01)  # min_lr at the end of the cosine
    middle = warmup_steps + (len(rates) - warmup_steps) // 2
    assert rates[middle] == pytest.approx(1e-5 + (peak_lr - 1e-5) / 2, rel=0.01)  # half-way down the cosine


def test_torchvision_magnitude_27_is_timms_m9():
    """timm's RandAugment magnitude is out of 10 (`_LEVEL_DENOM`), torchvision's out of 30 (31 bins): m9 is 27."""
    auto_augment = pytest.importorskip("timm.data.auto_augment")
    from torchvision.transforms import v2

    def torchvision_magnitude(operation: str, bin_index: int) -> float:
        magnitudes, _ = v2.RandAugment._AUGMENTATION_SPACE[operation]
        return magnitudes(31, 32, 32)[bin_index].item()

    # timm negates at random; the magnitudes are what the two scales share.
    assert torchvision_magnitude("Rotate", 27) == pytest.approx(abs(auto_augment._rotate_level_to_arg(9, {})[0]))
    assert torchvision_magnitude("ShearX", 27) == pytest.approx(abs(auto_augment._shear_level_to_arg(9, {})[0]))
    assert torchvision_magnitude("Rotate", 27) == pytest.approx(27.0)  # 9 / 10 of 30 degrees
    assert torchvision_magnitude("Rotate", 9) == pytest.approx(9.0)  # what magnitude 9 would give: a third of it


def write_stand_in(root: Path, dataset_name: str, seed: int = 0) -> Path:
    """A local dataset directory (parquet shards per split) with the real dataset's columns, label names and splits;
    `load_dataset(root)` reads it as it reads the Hub dataset."""
    image_column, label_column, num_classes, splits, (width, height) = DATASET_STRUCTURES[dataset_name]
    names = (
        list(FASHION_MNIST_LABELS) if dataset_name == "fashion-mnist" else [f"class_{i}" for i in range(num_classes)]
    )
    columns = {image_column: Image(), label_column: ClassLabel(names=names)}
    if label_column == "fine_label":  # CIFAR-100 also has the 20 superclasses
        columns["coarse_label"] = ClassLabel(names=[f"superclass_{i}" for i in range(20)])
    rng = np.random.default_rng(seed)
    mode = "L" if dataset_name == "fashion-mnist" else "RGB"
    shape = (height, width) if mode == "L" else (height, width, 3)
    for split, count in zip(splits, (12, 6), strict=True):
        rows = {
            image_column: [
                PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(count)
            ],
            label_column: rng.integers(0, num_classes, count).tolist(),
        }
        if "coarse_label" in columns:
            rows["coarse_label"] = rng.integers(0, 20, count).tolist()
        (root / "data").mkdir(parents=True, exist_ok=True)
        Dataset.from_dict(rows, features=Features(columns)).to_parquet(
            root / "data" / f"{split}-00000-of-00001.parquet"
        )
    return root


def train_two_steps(recipe: Path, tmp_path: Path, *extra: str) -> dict:
    dataset_name = read_argument_file(recipe)["dataset_name"]
    data_dir = write_stand_in(tmp_path / "data", dataset_name)
    output_dir = tmp_path / "run"
    argv = [
        str(recipe),
        f"--dataset_name={data_dir}",
        f"--output_dir={output_dir}",
        "--max_steps=2",
        "--per_device_train_batch_size=4",
        "--per_device_eval_batch_size=6",
        "--dataloader_num_workers=0",
        "--dataloader_persistent_workers=false",
        "--disable_tqdm=true",
        *extra,
    ]
    assert load_script("train").main(argv) == 0
    results = json.loads((output_dir / "results.json").read_text())
    predictions = json.loads((output_dir / "predictions.json").read_text())
    assert results["training"]["max_steps"] == 2 and results["dataset"]["num_eval"] == 6
    assert len(predictions["predicted"]) == 6 and len(predictions["label_names"]) == DATASET_STRUCTURES[dataset_name][2]
    assert math.isfinite(results["metrics"]["eval_loss"])
    return results


@pytest.mark.parametrize(
    "recipe", [recipe for recipe in RECIPES if not recipe.stem.startswith("imagenet")], ids=lambda path: path.name
)
def test_a_small_image_recipe_trains_two_steps_at_full_model_size(recipe, tmp_path):
    results = train_two_steps(recipe, tmp_path)
    model = parse_recipe(recipe)[0]
    assert results["preset"] == model.preset and results["pe_join"] == "lape"
    assert results["training"]["rand_augment_magnitude"] == parse_recipe(recipe)[2].rand_augment_magnitude


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_an_imagenet_recipe_trains_two_steps_on_a_shrunk_model(size, tmp_path):
    results = train_two_steps(ROOT / "recipes" / f"imagenet-deit-{size}.yaml", tmp_path, SMALL_DEIT, "--pe_join=add")
    assert results["preset"] == f"deit-{size}" and results["pe_join"] == "add"
    assert results["config"]["num_hidden_layers"] == 2 and results["dataset"]["num_labels"] == 1000


@pytest.mark.slow
@pytest.mark.parametrize("size", ["tiny", "small"])
def test_an_imagenet_recipe_trains_two_steps_at_full_size(size, tmp_path):
    results = train_two_steps(
        ROOT / "recipes" / f"imagenet-deit-{size}.yaml", tmp_path, "--per_device_train_batch_size=2"
    )
    assert results["config"]["image_size"] == 224 and results["config"]["num_hidden_layers"] == 12


def test_arguments_files_become_command_lines(tmp_path):
    values = {"image_mean": [0.5, 0.5, 0.5], "rand_augment": False, "data_dir": None, "seed": 3, "kw": {"a": 1e-5}}
    assert as_command_line(values) == [
        "--image_mean", "0.5", "0.5", "0.5", "--rand_augment=false", "--seed=3", '--kw={"a": 1e-05}',
    ]  # fmt: skip
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        read_argument_file(tmp_path / "list.yaml")
    with pytest.raises(ValueError, match="does not exist"):
        read_argument_file(tmp_path / "missing.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_argument_file(tmp_path / "bad.json")


def test_train_py_reads_a_recipe_then_the_arguments_after_it(monkeypatch, tmp_path):
    """The file first, the command line after it wins; the run is only parsed here (run_training is replaced)."""
    train = load_script("train")
    seen = {}
    monkeypatch.setattr(train, "run_training", lambda *arguments: seen.setdefault("arguments", arguments) and {})
    monkeypatch.setattr(train, "format_report", lambda results: "")
    recipe = ROOT / "recipes" / "cifar10-vit-lite-7-4.yaml"
    assert train.main([str(recipe), "--pe_join", "add", "--learning_rate=1e-4", f"--output_dir={tmp_path}"]) == 0
    model, data, _, training, _ = seen["arguments"]
    assert (model.pe_join, training.learning_rate, training.output_dir) == ("add", 1e-4, str(tmp_path))
    assert data.dataset_name == "uoft-cs/cifar10" and training.weight_decay == 0.06  # still the file's


def test_train_py_refuses_the_demo_with_a_recipe(tmp_path, capsys):
    recipe = ROOT / "recipes" / "cifar10-vit-lite-7-4.yaml"
    assert load_script("train").main([str(recipe), "--demo"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --demo with ") and len(error.strip().splitlines()) == 1
