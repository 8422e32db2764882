"""Training through the HF Trainer: short real runs (image folder, bundled digits), the saved model and results.json,
exact resume, fine-tuning on a new label set, the DeiT optimizer groups, the loss, the metric module and the
reproducible augmentation; the two-process accelerate run and the README demo are marked slow."""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import evaluate
import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CCT, tiny_config
from datasets import Array3D, ClassLabel, Dataset, Features
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser, TrainerCallback

from lape_hf import LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher
from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor
from lape_hf.training import (
    ARGUMENT_CLASSES,
    LapeTrainer,
    LapeTrainingArguments,
    ModelArguments,
    classification_loss,
    load_accuracy_metric,
    run_training,
    top_predictions,
)
from lape_hf.training.results import RESULTS_FILE, ResultsError, RunResults
from lape_hf.training.run import _resolve_checkpoint
from lape_hf.training.trainer import METRIC_PATH
from lape_hf.training.transforms import (
    AugmentationArguments,
    EpochCallback,
    ImageClassificationCollator,
    ImageClassificationDataset,
    build_train_transform,
    normalize_transform,
)

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = [
    "--preset=vit-lite-7/4",
    "--config_overrides=image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,"
    "intermediate_size=64",
]
QUIET_AND_FAST = [
    "--torch_num_threads=1",
    "--dataloader_num_workers=0",
    "--disable_tqdm=true",
    "--eval_strategy=no",
    "--save_strategy=no",
]
RESULT_KEYS = {
    "model_type",
    "preset",
    "pe_join",
    "position_embedding_type",
    "dataset",
    "metrics",
    "training",
    "config",
    "versions",
    "wall_time_seconds",
}
TRAINING_KEYS = {
    "epochs",
    "learning_rate",
    "per_device_train_batch_size",
    "weight_decay",
    "label_smoothing",
    "lr_scheduler_type",
    "seed",
    "mixup",
    "cutmix",
    "rand_augment",
    "random_erasing",
    "num_processes",
}


def parse(*args: str):
    return HfArgumentParser(ARGUMENT_CLASSES).parse_args_into_dataclasses(args=list(args))


def train(*args: str, model: list[str] = TINY_MODEL) -> dict:
    """A run as `scripts/train.py` makes it, in this process (torch's thread count restored afterwards)."""
    threads = torch.get_num_threads()
    try:
        return run_training(*parse(*model, *QUIET_AND_FAST, *args))
    finally:
        torch.set_num_threads(threads)


def pattern_image(kind: str, seed: int, size: int = 16) -> PIL.Image.Image:
    """Noisy stripes (horizontal, vertical) or a checkerboard, at a random phase: learnable, not trivially."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:size, :size] + rng.integers(0, 4, size=2)[:, None, None]
    pattern = {"horizontal": rows // 2 % 2, "vertical": columns // 2 % 2, "checker": (rows // 2 + columns // 2) % 2}
    pixels = np.clip(0.1 + 0.8 * pattern[kind] + rng.normal(0, 0.15, (size, size)), 0, 1)
    return PIL.Image.fromarray((pixels * 255).astype(np.uint8), mode="L").convert("RGB")


@pytest.fixture(scope="module")
def pattern_folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("patterns")
    for split, count, offset in (("train", 24, 0), ("val", 12, 1000)):
        for kind in ("checker", "horizontal", "vertical"):
            (root / split / kind).mkdir(parents=True)
            for index in range(count):
                pattern_image(kind, offset + index).save(root / split / kind / f"{index}.png")
    return root / "train", root / "val"


@pytest.fixture(scope="module")
def folder_run(pattern_folders, tmp_path_factory) -> tuple[dict, Path]:
    train_dir, val_dir = pattern_folders
    output_dir = tmp_path_factory.mktemp("folder_run") / "model"
    results = train(
        f"--train_dir={train_dir}",
        f"--validation_dir={val_dir}",
        f"--output_dir={output_dir}",
        "--num_train_epochs=12",
        "--per_device_train_batch_size=8",
        "--learning_rate=2e-3",
        "--crop_scale_min=0.8",
        "--rand_augment=false",
        "--mixup=0",
        "--cutmix=0",
        "--random_erasing=0",
    )
    return results, output_dir


def accuracy_of_saved_model(model_dir: Path, images: list, labels: list[int]) -> float:
    """Independent of the Trainer: load the saved model and processor as a user would and count hits."""
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt")).logits
    return float((logits.argmax(-1) == torch.tensor(labels)).float().mean())


def test_a_short_run_on_an_image_folder_learns_and_saves_a_loadable_model(folder_run, pattern_folders):
    results, output_dir = folder_run
    assert results["metrics"]["eval_accuracy"] >= 0.6  # chance is 1/3
    saved = {path.name for path in output_dir.iterdir()}
    expected_files = {"model.safetensors", "config.json", "preprocessor_config.json", "results.json"}
    assert expected_files | {"modeling_lape_vit.py", "configuration_lape_vit.py"} <= saved
    assert "pytorch_model.bin" not in saved  # the weights are safetensors only
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"].endswith("LapeViTForImageClassification")
    assert config["id2label"] == {"0": "checker", "1": "horizontal", "2": "vertical"}

    _, val_dir = pattern_folders
    paths = sorted(val_dir.rglob("*.png"))
    labels = [["checker", "horizontal", "vertical"].index(path.parent.name) for path in paths]
    images = [PIL.Image.open(path) for path in paths]
    assert accuracy_of_saved_model(output_dir, images, labels) == pytest.approx(results["metrics"]["eval_accuracy"])


def test_results_json_follows_the_contract(folder_run):
    results, output_dir = folder_run
    on_disk = json.loads((output_dir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert RESULT_KEYS <= set(on_disk)
    assert (on_disk["model_type"], on_disk["preset"], on_disk["pe_join"]) == ("lape_vit", "vit-lite-7/4", "lape")
    assert on_disk["position_embedding_type"] == "learnable"
    assert on_disk["dataset"] == {
        "name": "imagefolder",
        "train_split": "train",
        "eval_split": "validation",
        "num_train": 72,
        "num_eval": 36,
        "num_labels": 3,
        "data_mode": "prepared",  # 72 images at 16 px: small arrays, chosen automatically
        "eval_geometry": "resize",  # a 16 px model: a straight resize
    }
    assert {"eval_accuracy", "eval_top5_accuracy", "eval_loss"} <= set(on_disk["metrics"])
    assert 0 <= on_disk["metrics"]["eval_accuracy"] <= on_disk["metrics"]["eval_top5_accuracy"] == 1.0  # 3 classes
    training = on_disk["training"]
    assert TRAINING_KEYS <= set(training) and ("warmup_ratio" in training or "warmup_steps" in training)
    assert (training["epochs"], training["per_device_train_batch_size"], training["num_processes"]) == (12.0, 8, 1)
    assert (training["mixup"], training["cutmix"], training["rand_augment"]) == (0.0, 0.0, False)
    # Every augmentation setting is recorded, the flip resolved for the data (on: an image folder is not digits).
    assert set(dataclasses.asdict(AugmentationArguments())) <= set(training) and training["horizontal_flip"] is True
    assert on_disk["config"]["hidden_size"] == 32 and on_disk["config"]["image_size"] == 16
    assert {"lape_hf", "transformers", "torch", "torchvision", "datasets", "accelerate"} == set(on_disk["versions"])
    assert on_disk["wall_time_seconds"] > 0


def test_the_results_record_round_trips_and_checks_what_it_reads(folder_run, tmp_path):
    results, output_dir = folder_run
    record = RunResults.read(output_dir)
    assert record.to_dict() == json.loads(json.dumps(results))
    assert record.dataset.num_labels == 3 and record.training["num_processes"] == 1
    # A hand-written record needs only the dataset and the metrics; unknown keys are kept as they were.
    minimal = {"dataset": {"name": "mine"}, "metrics": {"eval_accuracy": 0.5}, "notes": "by hand"}
    assert RunResults.from_dict(minimal).to_dict() == {"preset": None, **minimal}
    written = RunResults.from_dict(minimal).write(tmp_path)
    assert written == tmp_path / RESULTS_FILE and json.loads(written.read_text())["notes"] == "by hand"
    with pytest.raises(ResultsError, match="must be a fraction in"):
        RunResults.from_dict({**minimal, "metrics": {"eval_accuracy": 93.0}})
    with pytest.raises(ResultsError, match="'training' must be an object"):
        RunResults.from_dict({**minimal, "training": [1]})
    assert RunResults.read(tmp_path / "nothing-here") is None


def test_importing_the_results_record_loads_no_training_machinery():
    """The model card imports it: no Trainer, datasets, evaluate or torchvision on the way."""
    code = (
        "import sys, lape_hf.training.results; "
        "print(sorted(m for m in ('datasets', 'evaluate', 'transformers.trainer', 'lape_hf.training.run') "
        "if m in sys.modules))"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert process.stdout.strip() == "[]"


def test_pipeline_classifies_raw_images_with_the_saved_model(folder_run, pattern_folders):
    _, output_dir = folder_run
    _, val_dir = pattern_folders
    paths = sorted(val_dir.rglob("*.png"))[::6]
    images = [PIL.Image.open(path) for path in paths]
    predictions = top_predictions(output_dir, images)
    model = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    with torch.no_grad():
        probabilities = model(**processor(images, return_tensors="pt")).logits.softmax(-1)
    assert [prediction["label"] for prediction in predictions] == [
        model.config.id2label[int(index)] for index in probabilities.argmax(-1)
    ]
    assert [prediction["score"] for prediction in predictions] == pytest.approx(
        probabilities.max(-1).values.tolist(), abs=1e-5
    )


def test_a_short_run_on_the_bundled_digits_beats_chance(tmp_path):
    # One wide layer learns the digits fastest in a couple of epochs (narrow ViTs start slowly).
    one_wide_layer = "image_size=16,patch_size=4,hidden_size=128,num_hidden_layers=1,num_attention_heads=4,"
    results = train(
        f"--output_dir={tmp_path / 'digits'}",
        "--num_train_epochs=2",
        "--per_device_train_batch_size=64",
        "--learning_rate=1e-3",
        "--random_resized_crop=false",
        "--rand_augment=false",
        "--mixup=0",
        "--cutmix=0",
        "--random_erasing=0",
        model=["--preset=vit-lite-7/4", f"--config_overrides={one_wide_layer}intermediate_size=128"],
    )
    assert results["dataset"]["name"] == "sklearn-digits" and results["dataset"]["num_eval"] == 360
    assert results["metrics"]["eval_accuracy"] > 0.5  # chance is 0.1
    assert load_file(tmp_path / "digits" / "model.safetensors")  # a readable safetensors file
    assert 0.0 <= results["timing"]["data_wait_fraction"] < 1.0


def test_fine_tuning_a_checkpoint_on_a_new_label_set(folder_run, tmp_path):
    _, checkpoint = folder_run
    new_labels = tmp_path / "two_classes"
    for kind in ("horizontal", "vertical"):
        (new_labels / kind).mkdir(parents=True)
        for index in range(4):
            pattern_image(kind, 500 + index).save(new_labels / kind / f"{index}.png")
    common = [f"--train_dir={new_labels}", "--train_val_split=0.5"]
    from_checkpoint = [f"--model_name_or_path={checkpoint}"]
    with pytest.raises(ValueError, match="classifies 3 labels .* the dataset has 2 .* --ignore_mismatched_sizes"):
        train(*common, f"--output_dir={tmp_path / 'refused'}", "--max_steps=1", model=from_checkpoint)
    results = train(
        *common,
        "--ignore_mismatched_sizes",
        f"--output_dir={tmp_path / 'tuned'}",
        "--max_steps=2",
        model=from_checkpoint,
    )
    assert results["preset"] is None and results["dataset"]["num_labels"] == 2
    tuned = load_file(tmp_path / "tuned" / "model.safetensors")
    original = load_file(checkpoint / "model.safetensors")
    assert tuned["classifier.weight"].shape == (2, 32)
    # The encoder starts from the checkpoint: two small steps move every weight by < 5e-3 (measured: ~5e-4), where a
    # freshly initialised model would differ by ~0.04 in the position embeddings alone.
    shared = [name for name in original if name in tuned and not name.startswith("classifier")]
    assert "lape_vit.embeddings.position_embedding.position_embeddings" in shared
    for name in shared:
        assert (tuned[name] - original[name]).abs().max() < 5e-3, name


def test_resuming_mid_epoch_gives_the_uninterrupted_run(pattern_folders, tmp_path):
    """Stop after 3 of 8 steps (5 steps per epoch), resume from that checkpoint with another number of dataloader
    workers: same weights and metrics, with every random augmentation, dropout and drop-path switched on."""
    train_dir, val_dir = pattern_folders
    recipe = [
        f"--train_dir={train_dir}",
        f"--validation_dir={val_dir}",
        "--max_train_samples=40",
        "--per_device_train_batch_size=8",
        "--max_steps=8",
        "--save_strategy=steps",
        "--save_steps=3",
        "--save_total_limit=5",
        "--config_overrides=image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,"
        "intermediate_size=64,drop_path_rate=0.2,attention_probs_dropout_prob=0.1,hidden_dropout_prob=0.1",
    ]
    uninterrupted = train(*recipe, f"--output_dir={tmp_path / 'uninterrupted'}")
    resumed = train(
        *recipe,
        f"--output_dir={tmp_path / 'resumed'}",
        f"--resume_from_checkpoint={tmp_path / 'uninterrupted' / 'checkpoint-3'}",
        "--dataloader_num_workers=1",
        "--dataloader_persistent_workers=true",
    )
    expected = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    actual = load_file(tmp_path / "resumed" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)
    start = load_file(tmp_path / "uninterrupted" / "checkpoint-3" / "model.safetensors")
    assert any(not torch.equal(start[name], expected[name]) for name in expected)  # steps 4-8 did train
    for key in ("eval_loss", "eval_accuracy", "eval_top5_accuracy"):
        assert resumed["metrics"][key] == pytest.approx(uninterrupted["metrics"][key], abs=1e-6)


def test_weight_decay_spares_position_embeddings_tokens_norms_and_biases(tmp_path):
    model = LapeViTForImageClassification(
        tiny_config(use_distillation_token=False, relative_position_bias="lape", drop_path_rate=0.0)
    )
    args = LapeTrainingArguments(output_dir=str(tmp_path), weight_decay=0.05, eval_strategy="no")
    optimizer = LapeTrainer(model=model, args=args).create_optimizer()
    name_of = {id(parameter): name for name, parameter in model.named_parameters()}
    names = set(name_of.values())
    groups = {group["weight_decay"]: {name_of[id(p)] for p in group["params"]} for group in optimizer.param_groups}
    decayed, spared = groups[0.05], groups[0.0]
    assert decayed | spared == names and not decayed & spared
    assert "lape_vit.embeddings.position_embedding.position_embeddings" in spared
    assert "lape_vit.embeddings.cls_token" in spared
    assert "lape_vit.encoder.layers.0.attention.relative_position_bias.table" in spared
    assert all(name in spared for name in names if "layernorm" in name or name.endswith(".bias"))
    assert decayed == {name for name, p in model.named_parameters() if p.ndim > 1} - {
        "lape_vit.embeddings.position_embedding.position_embeddings",
        "lape_vit.embeddings.cls_token",
        *[name for name in names if name.endswith("relative_position_bias.table")],
    }
    assert "classifier.weight" in decayed and "lape_vit.encoder.layers.1.attention.qkv.weight" in decayed


@pytest.mark.parametrize(
    "overrides",
    [
        dict(use_distillation_token=True, relative_position_bias="lape", pe_join="unshare"),
        dict(TINY_CCT, relative_position_bias="lape", position_embedding_type="learnable"),
    ],
    ids=["distilled-vit", "cct"],
)
def test_optimizer_groups_decay_exactly_the_linear_and_conv_weights(tmp_path, overrides):
    """The no-decay group holds the PE, the class/distillation tokens, RPE tables, biases and norms; the decay group
    holds the weights of the Linear and Conv layers, found here by module type (not by the model's own list)."""
    config = tiny_config(**overrides)
    model_class = (
        LapeViTForImageClassificationWithTeacher if config.use_distillation_token else LapeViTForImageClassification
    )
    model = model_class(config)
    args = LapeTrainingArguments(output_dir=str(tmp_path), weight_decay=0.05, eval_strategy="no")
    optimizer = LapeTrainer(model=model, args=args).create_optimizer()
    name_of = {id(parameter): name for name, parameter in model.named_parameters()}
    groups = {group["weight_decay"]: {name_of[id(p)] for p in group["params"]} for group in optimizer.param_groups}
    layer_weights = {
        f"{module_name}.weight"
        for module_name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
    }
    assert groups[0.05] == layer_weights
    assert groups[0.0] == set(name_of.values()) - layer_weights
    spared = groups[0.0]
    assert any("position_embedding" in name for name in spared)
    assert all(name in spared for name in name_of.values() if name.endswith((".bias", "_token", ".table")))
    assert all(name in spared for name in name_of.values() if "norm" in name)
    if config.use_distillation_token:
        assert {"lape_vit.embeddings.cls_token", "lape_vit.embeddings.distillation_token"} <= spared


class SlowDataset(torch.utils.data.Dataset):
    """Every item takes `delay` seconds to load: with no workers, the training loop waits that long for it."""

    def __init__(self, count: int, delay: float):
        self.count, self.delay = count, delay

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        time.sleep(self.delay)
        return {"pixel_values": torch.randn(3, 32, 32), "labels": index % 5}


class SlowStep(TrainerCallback):
    """Every optimizer step ends with `delay` seconds of work that is not waiting for data."""

    def __init__(self, delay: float):
        self.delay = delay

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.delay)


def test_the_trainer_counts_the_time_spent_waiting_for_batches(tmp_path):
    """3 steps of 2 items at 50 ms each: at least 0.3 s of waiting (accelerate may fetch one batch ahead: 0.4 s),
    while the 0.2 s of other work after each step is not counted."""
    args = LapeTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        dataloader_num_workers=0,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = LapeTrainer(
        model=LapeViTForImageClassification(tiny_config()),
        args=args,
        train_dataset=SlowDataset(8, 0.05),
        callbacks=[SlowStep(0.2)],
    )
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    assert 0.3 <= trainer.data_wait_seconds < 0.4 + 0.25  # the next batch at most, plus scheduling slack
    assert elapsed - trainer.data_wait_seconds >= 3 * 0.2


def test_the_loss_takes_class_indices_and_mixed_soft_targets_with_label_smoothing():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    outputs = type("Outputs", (), {"logits": logits})()
    log_probabilities = logits.log_softmax(-1)
    hard = torch.tensor([0, 2])
    smoothed = torch.full((2, 3), 0.1 / 3) + 0.9 * F.one_hot(hard, 3)
    expected_hard = -(smoothed * log_probabilities).sum(-1).mean()
    torch.testing.assert_close(classification_loss(outputs, hard, 0.1), expected_hard)
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])
    expected_soft = -((0.9 * soft + 0.1 / 3) * log_probabilities).sum(-1).mean()
    torch.testing.assert_close(classification_loss(outputs, soft, 0.1), expected_soft)
    teacher = type("Outputs", (), {"logits": logits, "cls_logits": logits, "distillation_logits": logits.flip(-1)})()
    expected_pair = (F.cross_entropy(logits, hard) + F.cross_entropy(logits.flip(-1), hard)) / 2
    torch.testing.assert_close(classification_loss(teacher, hard, 0.0), expected_pair)


def test_the_shipped_metric_module_loads_offline_and_counts_top_k(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = load_accuracy_metric()
    scores = np.random.default_rng(0).normal(size=(50, 7))
    scores[0] = 0.0  # a full tie: the lowest class index wins, as with argmax
    references = np.random.default_rng(1).integers(0, 7, 50)
    result = metric.compute(predictions=scores, references=references, k=5)
    top5 = [set(np.argsort(-row, kind="stable")[:5]) for row in scores]
    assert result["accuracy"] == pytest.approx(np.mean(scores.argmax(-1) == references))
    hits = [reference in best for reference, best in zip(references, top5, strict=True)]
    assert result["top5_accuracy"] == pytest.approx(np.mean(hits))
    assert evaluate.load(str(METRIC_PATH)).compute(predictions=[[0.0, 1.0]], references=[1], k=5) == {
        "accuracy": 1.0,
        "top5_accuracy": 1.0,  # k is capped at the number of classes
    }


@pytest.mark.parametrize("num_classes,k", [(2, 1), (2, 2), (3, 2), (4, 3), (10, 5)])
def test_the_metric_counts_top_k_with_few_classes_and_classes_missing_from_the_references(num_classes, k):
    """Independent count: a reference is a hit when fewer than k classes score strictly higher (no ties here)."""
    metric = load_accuracy_metric()
    rng = np.random.default_rng(num_classes * 10 + k)
    scores = rng.normal(size=(40, num_classes))
    references = rng.integers(0, max(1, num_classes - 1), 40)  # the last class never occurs as a reference
    result = metric.compute(predictions=scores, references=references, k=k)
    higher = (scores > scores[np.arange(40), references][:, None]).sum(axis=1)
    assert result["accuracy"] == pytest.approx(np.mean(higher == 0))
    assert result[f"top{k}_accuracy"] == pytest.approx(np.mean(higher < k))


def prepared_toy_split(count: int = 6, size: int = 16) -> Dataset:
    pixels = np.random.default_rng(0).integers(0, 256, (count, 3, size, size), dtype=np.uint8)
    features = Features(
        {"pixel_values": Array3D((3, size, size), "uint8"), "labels": ClassLabel(names=["a", "b", "c"])}
    )
    return Dataset.from_dict({"pixel_values": pixels, "labels": [index % 3 for index in range(count)]}, features)


def test_augmentation_depends_only_on_seed_epoch_and_batch_and_leaves_the_global_rng_alone():
    processor = build_image_processor(tiny_config(image_size=16, patch_size=4))
    augmentation = AugmentationArguments(random_erasing=0.5)
    transform = build_train_transform(augmentation, processor, horizontal_flip=True)
    collator = ImageClassificationCollator(processor, num_labels=3, mixup=0.8, cutmix=1.0, random_erasing=0.5)

    def batch(dataset: ImageClassificationDataset, indices: list[int]) -> dict[str, torch.Tensor]:
        return collator(dataset.__getitems__(indices))

    dataset = ImageClassificationDataset(prepared_toy_split(), transform, seed=7)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = batch(dataset, [4, 1, 2])
    assert torch.equal(torch.random.get_rng_state(), before)
    again = batch(ImageClassificationDataset(prepared_toy_split(), transform, seed=7), [4, 1, 2])
    assert all(torch.equal(first[key], again[key]) for key in ("pixel_values", "labels"))
    callback = EpochCallback(dataset)
    callback.on_epoch_begin(None, type("State", (), {"epoch": 1.6})(), None)  # resumed mid-way through epoch 1
    assert dataset.epoch == 1
    other_epoch = batch(dataset, [4, 1, 2])
    assert not torch.equal(first["pixel_values"], other_epoch["pixel_values"])
    other_seed = batch(ImageClassificationDataset(prepared_toy_split(), transform, seed=8), [4, 1, 2])
    assert not torch.equal(first["pixel_values"], other_seed["pixel_values"])
    assert [example["labels"] for example in dataset.__getitems__([4, 1, 2])] == [1, 1, 2]
    # A split too large to hold in memory is read from Arrow per batch, with the same result.
    from_arrow = ImageClassificationDataset(prepared_toy_split(), transform, seed=7, max_in_memory_bytes=0)
    assert from_arrow._pixels is None
    assert torch.equal(batch(from_arrow, [4, 1, 2])["pixel_values"], first["pixel_values"])


def test_eval_batches_are_the_processor_output_and_only_training_batches_are_augmented():
    processor = build_image_processor(tiny_config(image_size=16, patch_size=4))
    split = prepared_toy_split()
    raw = torch.as_tensor(np.asarray(split.with_format("numpy", dtype=np.uint8)["pixel_values"][:4]))
    collator = ImageClassificationCollator(processor, num_labels=3, mixup=0.8, cutmix=1.0, random_erasing=1.0)

    eval_batch = collator(ImageClassificationDataset(split).__getitems__([0, 1, 2]))
    expected = processor([image.permute(1, 2, 0).numpy() for image in raw[:3]], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(eval_batch["pixel_values"], expected, atol=1e-6, rtol=0)
    assert eval_batch["labels"].tolist() == [0, 1, 2]

    no_per_image_transform = build_train_transform(
        AugmentationArguments(random_resized_crop=False, rand_augment=False), processor, horizontal_flip=False
    )
    assert no_per_image_transform is None
    train_examples = ImageClassificationDataset(split, no_per_image_transform, seed=0).__getitems__([0, 1, 2, 3])
    train_batch = collator(train_examples)  # erased and mixed
    assert train_batch["labels"].shape == (4, 3) and train_batch["labels"].dtype == torch.float32
    torch.testing.assert_close(train_batch["labels"].sum(-1), torch.ones(4))
    assert not torch.allclose(train_batch["pixel_values"], normalize_transform(processor)(raw))
    unaugmented = ImageClassificationCollator(processor, num_labels=3)(train_examples)
    assert unaugmented["labels"].tolist() == [0, 1, 2, 0]
    torch.testing.assert_close(unaugmented["pixel_values"], normalize_transform(processor)(raw), atol=0, rtol=0)


def test_bad_arguments_fail_early_with_what_is_allowed():
    with pytest.raises(ValueError, match="Unknown preset 'vit-huge'"):
        ModelArguments(preset="vit-huge")
    with pytest.raises(ValueError, match="Give one of"):
        ModelArguments(preset="deit-tiny", model_name_or_path="org/model")
    with pytest.raises(ValueError, match="mixup=-1.0 must be an alpha >= 0"):
        AugmentationArguments(mixup=-1.0)
    with pytest.raises(ValueError, match="remove_unused_columns=True is not supported"):
        LapeTrainingArguments(output_dir="x", remove_unused_columns=True)


def test_resume_from_last_finds_the_newest_complete_checkpoint(tmp_path, caplog):
    for step in (3, 12, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    args = LapeTrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint="last")
    assert _resolve_checkpoint(args) == str(tmp_path / "checkpoint-12")
    # A run killed while saving leaves a checkpoint without trainer_state.json (the Trainer writes it last).
    (tmp_path / "checkpoint-15").mkdir()
    (tmp_path / "checkpoint-15" / "model.safetensors").write_bytes(b"partial")
    with caplog.at_level("WARNING", logger="lape_hf.training.run"):
        assert _resolve_checkpoint(args) == str(tmp_path / "checkpoint-12")
    assert "Skipping the incomplete checkpoint" in caplog.text and "checkpoint-15" in caplog.text
    with pytest.raises(ValueError, match="no complete checkpoint in"):
        _resolve_checkpoint(LapeTrainingArguments(output_dir=str(tmp_path / "empty"), resume_from_checkpoint="last"))
    with pytest.raises(ValueError, match="is not a checkpoint directory"):
        _resolve_checkpoint(LapeTrainingArguments(output_dir="x", resume_from_checkpoint=str(tmp_path / "missing")))


def train_script_parse(monkeypatch, *argv: str) -> tuple:
    """The dataclasses scripts/train.py's main hands to run_training for `argv` (training itself is not run)."""
    main = runpy.run_path(str(ROOT / "scripts" / "train.py"))["main"]

    class Parsed(Exception):
        pass

    def fake_run_training(*arguments):
        raise Parsed(arguments)

    monkeypatch.setitem(main.__wrapped__.__globals__, "run_training", fake_run_training)  # main is wrapped by @script
    with pytest.raises(Parsed) as parsed:
        main(list(argv))
    return parsed.value.args[0]


@pytest.mark.parametrize("flag", ["--demo", "--demo=true"])
def test_the_demo_recipe_comes_first_and_the_command_line_wins(monkeypatch, tmp_path, flag):
    model_args, _, augmentation, training_args, run_args = train_script_parse(
        monkeypatch, flag, "--num_train_epochs=2", f"--output_dir={tmp_path}"
    )
    assert (training_args.num_train_epochs, training_args.output_dir) == (2, str(tmp_path))
    assert run_args.demo and run_args.classify_examples == 8 and training_args.learning_rate == 1e-3
    assert model_args.pe_join == "lape" and augmentation.horizontal_flip is None


def test_an_arguments_file_asking_for_the_demo_is_refused(tmp_path, capsys):
    arguments_file = tmp_path / "args.json"
    arguments_file.write_text(json.dumps({"demo": True, "output_dir": str(tmp_path)}))
    main = runpy.run_path(str(ROOT / "scripts" / "train.py"))["main"]
    assert main([str(arguments_file)]) == 2  # a user error: one line, no traceback
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "sets demo: true; the demo recipe applies to command lines" in error
    assert len(error.strip().splitlines()) == 1


def run_script(*command: str, timeout: int) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
def test_two_process_accelerate_run_is_data_parallel(pattern_folders, tmp_path):
    train_dir, val_dir = pattern_folders
    output_dir = tmp_path / "ddp"
    process = run_script(
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "scripts/train.py",
        *TINY_MODEL,
        *QUIET_AND_FAST,
        f"--train_dir={train_dir}",
        f"--validation_dir={val_dir}",
        f"--output_dir={output_dir}",
        "--per_device_train_batch_size=8",
        "--num_train_epochs=2",
        "--rand_augment=false",
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads((output_dir / "results.json").read_text())
    # 72 images, 8 per process and step, 2 processes: 5 steps per epoch (accelerate pads the last batch).
    assert results["training"]["num_processes"] == 2
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 10
    assert results["metrics"]["eval_accuracy"] == pytest.approx(
        accuracy_of_saved_model(
            output_dir,
            [PIL.Image.open(path) for path in sorted(val_dir.rglob("*.png"))],
            [["checker", "horizontal", "vertical"].index(path.parent.name) for path in sorted(val_dir.rglob("*.png"))],
        )
    )


@pytest.mark.slow
def test_the_readme_demo_reaches_97_percent_on_the_digits(tmp_path):
    output_dir = tmp_path / "demo"
    process = run_script(sys.executable, "scripts/train.py", "--demo", f"--output_dir={output_dir}", timeout=1800)
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads((output_dir / "results.json").read_text())
    assert results["metrics"]["eval_accuracy"] >= 0.97
    assert "Eval accuracy" in process.stdout and "pipeline('image-classification')" in process.stdout
    assert len(results["examples"]) == 8


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--config_overrides=hiden_size=3"], "'hiden_size' is not a LapeViTConfig field"),
        (["--preset=vit-huge"], "Unknown preset 'vit-huge'"),
        (["--resume_from_checkpoint=last"], "no complete checkpoint in"),
    ],
)
def test_train_script_user_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    main = runpy.run_path(str(ROOT / "scripts" / "train.py"))["main"]
    assert main([*argv, f"--output_dir={tmp_path / 'out'}", "--max_steps=1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and len(error.strip().splitlines()) == 1


def test_fsdp_asked_for_but_not_set_up_is_refused_naming_both(monkeypatch):
    """On CPU accelerate turns an FSDP config into plain data parallelism (MULTI_CPU): training must not go on."""
    from accelerate.utils import DistributedType

    from lape_hf.training.trainer import check_fsdp_is_running

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match=r"requested by the accelerate config .* set up MULTI_CPU, not FSDP.*GPUs"):
        check_fsdp_is_running(DistributedType.MULTI_CPU, False)
    check_fsdp_is_running(DistributedType.FSDP, False)
    # `--fsdp` makes accelerate set ACCELERATE_USE_FSDP=true before the check: the argument is named, not the config.
    with pytest.raises(ValueError, match=r"requested by --fsdp but accelerate set up MULTI_CPU, not FSDP"):
        check_fsdp_is_running(DistributedType.MULTI_CPU, "full_shard auto_wrap")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(ValueError, match=r"requested by --fsdp but accelerate set up NO, not FSDP"):
        check_fsdp_is_running(DistributedType.NO, True)
    check_fsdp_is_running(DistributedType.MULTI_CPU, False)


@pytest.mark.parametrize(
    ("strategy", "expected_batches"),
    [
        (["--save_strategy=steps", "--save_steps=5"], 10),
        (["--save_strategy=steps", "--save_steps=0.25"], 10),  # a fraction of max_steps=20: step 5
        (["--save_strategy=best", "--eval_strategy=steps", "--eval_steps=4", "--save_steps=7"], 8),
        (["--save_strategy=epoch"], 40),  # one save, at max_steps (the Trainer ends the epoch there)
        (["--save_strategy=no"], 40),
    ],
)
def test_stream_snapshots_fall_on_every_step_the_trainer_can_checkpoint(strategy, expected_batches):
    """Batches between dataloader-worker snapshots (2 batches per optimizer step): "best" saves after evaluations,
    so its snapshots follow eval_steps, not save_steps."""
    from lape_hf.training.trainer import checkpoint_interval_batches

    training_args = parse(
        "--output_dir=unused",
        "--max_steps=20",
        "--gradient_accumulation_steps=2",
        "--metric_for_best_model=loss",
        *strategy,
    )[3]
    assert checkpoint_interval_batches(training_args) == expected_batches


def test_the_fsdp_recipe_wraps_each_lape_vit_layer():
    from accelerate.commands.config.config_args import load_config_from_file

    from lape_hf.models.lape_vit import modeling_lape_vit

    config = load_config_from_file(str(ROOT / "recipes" / "accelerate" / "fsdp.yaml"))
    assert (config.distributed_type, config.fsdp_config["fsdp_auto_wrap_policy"]) == ("FSDP", "TRANSFORMER_BASED_WRAP")
    layer = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    assert layer == "LapeViTLayer" and isinstance(getattr(modeling_lape_vit, layer), type)


@pytest.mark.slow
def test_a_two_process_fsdp_launch_on_cpu_stops_with_one_line(tmp_path):
    """The repository's FSDP recipe made for CPU (as its header says) under `accelerate launch`: exit status 2 and the
    refusal on stderr, before any output is written."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "accelerate" / "fsdp.yaml").read_text())
    recipe.update(use_cpu=True, mixed_precision="no", num_processes=2)
    config_file = tmp_path / "fsdp_cpu.yaml"
    config_file.write_text(yaml.safe_dump(recipe))
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            f"--config_file={config_file}",
            str(ROOT / "scripts" / "train.py"),
            *TINY_MODEL,
            *QUIET_AND_FAST,
            "--max_steps=2",
            f"--output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert process.returncode != 0
    assert "FSDP was requested by the accelerate config (ACCELERATE_USE_FSDP=true) but accelerate set up MULTI_CPU" in (
        process.stderr
    )
    assert not (tmp_path / "out").exists()
