"""LoRA fine-tuning through scripts/train.py: the adapter on the fused qkv, the classifier and PE LayerNorms trained in
full, labels reaching evaluation, the adapter loading back (also onto the remote-code base) and merging."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from conftest import randomize_
from hub_helpers import run_without_lape_hf
from safetensors import safe_open
from script_loader import load_script
from transformers import AutoModelForImageClassification

from lape_hf import LapeViTConfig, LapeViTForImageClassification
from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor
from lape_hf.training.lora import LoraArguments, apply_lora

peft = pytest.importorskip("peft")

DIGITS = [str(digit) for digit in range(10)]
HIDDEN, LAYERS, RANK = 32, 2, 4
FAST = [
    "--torch_num_threads=1",
    "--dataloader_num_workers=0",
    "--disable_tqdm=true",
    "--save_strategy=no",
    "--eval_strategy=no",
    "--max_steps=3",
    "--per_device_train_batch_size=16",
    "--max_train_samples=48",
    "--max_eval_samples=40",
]


def tiny_digits_classifier() -> LapeViTForImageClassification:
    config = LapeViTConfig.from_preset(
        "vit-lite-7/4",
        image_size=16,
        patch_size=4,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(DIGITS)),
        label2id={name: index for index, name in enumerate(DIGITS)},
    )
    return randomize_(LapeViTForImageClassification(config)).eval()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = tiny_digits_classifier()
    base.save_pretrained(root / "base")
    build_image_processor(base.config).save_pretrained(root / "base")
    status = load_script("train").main(
        [f"--model_name_or_path={root / 'base'}", "--lora_r", str(RANK), f"--output_dir={root / 'adapter'}", *FAST]
    )
    assert status == 0
    return root


def base_and_adapter(root) -> tuple[torch.nn.Module, torch.nn.Module]:
    base = AutoModelForImageClassification.from_pretrained(root / "base").eval()
    adapted = peft.PeftModel.from_pretrained(
        AutoModelForImageClassification.from_pretrained(root / "base"), root / "adapter"
    ).eval()
    return base, adapted


def test_the_output_is_an_adapter_with_the_image_processor(lora_run):
    files = {path.name for path in (lora_run / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "preprocessor_config.json", "results.json"} <= files
    assert "model.safetensors" not in files
    adapter_config = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == RANK and adapter_config["base_model_name_or_path"] == str(lora_run / "base")


def test_lora_is_on_qkv_and_the_classifier_and_pe_layernorms_are_saved_whole(lora_run):
    with safe_open(lora_run / "adapter" / "adapter_model.safetensors", "pt") as weights:
        assert weights.metadata() == {"format": "pt"}
        shapes = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118
    lora_names = [name for name in shapes if "lora_" in name]
    assert len(lora_names) == 2 * LAYERS and all(".attention.qkv." in name for name in lora_names)
    assert not any("classifier" in name for name in lora_names)  # the trap: LoRA on a fresh head
    classifier = {name: shape for name, shape in shapes.items() if "classifier" in name}
    assert sorted(classifier.values()) == [(10,), (10, HIDDEN)]
    assert sum("position_layernorm" in name for name in shapes) == 2 * LAYERS


def test_labels_reach_evaluation_and_the_parameter_counts_are_recorded(lora_run):
    results = json.loads((lora_run / "adapter" / "results.json").read_text())
    assert 0.0 <= results["metrics"]["eval_accuracy"] <= 1.0  # the Trainer kept the labels of the peft model
    lora = results["training"]["lora"]
    qkv_lora = LAYERS * RANK * (HIDDEN + 3 * HIDDEN)
    classifier = HIDDEN * 10 + 10
    position_layernorms = LAYERS * 2 * HIDDEN
    assert lora["trainable_parameters"] == qkv_lora + classifier + position_layernorms
    base_parameters = sum(p.numel() for p in tiny_digits_classifier().parameters())
    # the wrapped copies of the saved modules count once more in the total, as peft reports it
    assert lora["total_parameters"] == base_parameters + qkv_lora + classifier + position_layernorms
    assert lora["target_modules"] == ["qkv"] and lora["train_position_layernorms"] is True


def test_adapter_loads_back_and_merges_to_the_same_logits(lora_run):
    base, adapted = base_and_adapter(lora_run)
    pixel_values = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        adapted_logits = adapted(pixel_values=pixel_values).logits
        merged = adapted.merge_and_unload()
        merged_logits = merged(pixel_values).logits
        base_logits = base(pixel_values).logits
    assert type(merged) is LapeViTForImageClassification
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=0, atol=1e-5)
    assert (adapted_logits - base_logits).abs().max() > 1e-3  # the adapter changed the model


def test_adapter_loads_onto_the_remote_code_base_without_lape_hf(lora_run, tmp_path):
    _, adapted = base_and_adapter(lora_run)
    pixel_values = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.save(adapted(pixel_values=pixel_values).logits, tmp_path / "expected.pt")
    torch.save(pixel_values, tmp_path / "inputs.pt")
    code = textwrap.dedent(
        f"""
        import json, torch
        from peft import PeftModel
        from transformers import AutoModelForImageClassification
        base = AutoModelForImageClassification.from_pretrained({str(lora_run / "base")!r}, trust_remote_code=True)
        model = PeftModel.from_pretrained(base, {str(lora_run / "adapter")!r}).eval()
        with torch.no_grad():
            logits = model(pixel_values=torch.load({str(tmp_path / "inputs.pt")!r})).logits
            merged = model.merge_and_unload()(torch.load({str(tmp_path / "inputs.pt")!r})).logits
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        print(json.dumps({{"module": type(base).__module__, "diff": (logits - expected).abs().max().item(),
                          "merged_diff": (merged - expected).abs().max().item()}}))
        """
    )
    completed = run_without_lape_hf(code, cwd=tmp_path, hub_cache=tmp_path / "hub", timeout=600)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert not report["module"].startswith("lape_hf")
    assert report["diff"] == 0.0 and report["merged_diff"] <= 1e-5


@pytest.mark.parametrize("train_position_layernorms", [True, False])
def test_pe_layernorms_are_trained_or_frozen_by_the_flag(train_position_layernorms):
    model = apply_lora(
        tiny_digits_classifier(),
        LoraArguments(lora_r=2, lora_train_position_layernorms=train_position_layernorms),
    )
    # peft keeps a frozen `original_module` beside the trained copy of a saved module: the copy is what is trained
    position = [
        p.requires_grad
        for name, p in model.named_parameters()
        if "position_layernorm" in name and "original_module" not in name
    ]
    other_norms = [p.requires_grad for name, p in model.named_parameters() if "layernorm_before" in name]
    assert position and all(flag is train_position_layernorms for flag in position)
    assert not any(other_norms)
    head = [p.requires_grad for name, p in model.named_parameters() if "classifier.modules_to_save" in name]
    assert head == [True, True]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--lora_target_modules", "qkv_proj"], "['qkv_proj'] matches no LapeViT module; allowed: qkv, proj, fc1, fc2"),
        (["--lora_dropout", "1.5"], "lora_dropout=1.5 must be in [0, 1)"),
    ],
)
def test_bad_lora_arguments_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    status = load_script("train").main(
        [f"--model_name_or_path={tmp_path}", "--lora_r=4", f"--output_dir={tmp_path / 'out'}", *argv]
    )
    error = capsys.readouterr().err.strip()
    assert status == 2 and message in error and len(error.splitlines()) == 1


def test_lora_without_a_checkpoint_is_refused(tmp_path, capsys):
    status = load_script("train").main(["--lora_r=4", f"--output_dir={tmp_path / 'out'}"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "--lora_r 4 trains an adapter for a trained model: give --model_name_or_path" in error


def test_readme_lora_loading_example_runs_as_written(lora_run, tmp_path, monkeypatch):
    from test_readme import python_blocks

    (example,) = python_blocks("LoRA fine-tuning")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "demo").symlink_to(lora_run / "base")
    (tmp_path / "outputs" / "demo-lora").symlink_to(lora_run / "adapter")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md#lora", "exec"), namespace)
    assert type(namespace["merged"]) is LapeViTForImageClassification
