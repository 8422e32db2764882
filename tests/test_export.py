"""Export: torch.export programs and ONNX graphs with a dynamic batch, height and width, equal to eager PyTorch
(onnxruntime on CPU) at several batch sizes and non-square resolutions; scripts/export.py; the README's example."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CCT, randomize_, tiny_config
from PIL import Image
from script_loader import load_script
from test_readme import python_blocks

from lape_hf import LapeViTForImageClassification
from lape_hf.export import check_exportable, write_graph
from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

BATCH_SIZES = (1, 3, 8)
# (height, width): the trained size, then non-square ones with more and fewer tokens than it (patch 8, 32x24 trained).
RESOLUTIONS = ((32, 24), (48, 16), (24, 40))
TOLERANCE = 1e-4


def saved_classifier(directory: Path, **overrides) -> LapeViTForImageClassification:
    labels = ["zero", "one", "two", "three", "four"]
    config = tiny_config(
        **{"image_size": [32, 24], "num_hidden_layers": 2, **overrides},
        id2label=dict(enumerate(labels)),
        label2id={name: index for index, name in enumerate(labels)},
    )
    model = randomize_(LapeViTForImageClassification(config)).eval()
    model.save_pretrained(directory)
    build_image_processor(config).save_pretrained(directory)
    return model


def eager_logits(model: LapeViTForImageClassification, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values, interpolate_pos_encoding=True).logits


def max_onnx_difference(model: LapeViTForImageClassification, onnx_path: Path) -> float:
    """The largest |logit difference| between onnxruntime and eager PyTorch over all batch sizes and resolutions."""
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    differences = []
    for batch_size, (height, width) in itertools.product(BATCH_SIZES, RESOLUTIONS):
        pixel_values = torch.randn(batch_size, 3, height, width, generator=generator)
        (logits,) = session.run(None, {"pixel_values": pixel_values.numpy()})
        assert logits.shape == (batch_size, model.config.num_labels)
        differences.append((torch.from_numpy(logits) - eager_logits(model, pixel_values)).abs().max().item())
    return max(differences)


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """The LaPE join, a learnable PE and the LaPE relative position bias, exported to ONNX by the script."""
    root = tmp_path_factory.mktemp("export")
    model = saved_classifier(root / "model", relative_position_bias="lape", num_hidden_layers=1)
    status = load_script("export").main(
        ["--model", str(root / "model"), "--format", "onnx", "--output_dir", str(root / "onnx")]
    )
    assert status == 0
    return model, root


def test_onnx_export_equals_eager_at_every_batch_size_and_non_square_resolution(onnx_export):
    model, root = onnx_export
    assert max_onnx_difference(model, root / "onnx" / "model.onnx") <= TOLERANCE


def test_export_directory_is_self_describing_and_written_whole(onnx_export):
    _, root = onnx_export
    assert sorted(path.name for path in (root / "onnx").iterdir()) == [
        "config.json",
        "configuration_lape_vit.py",  # the config's remote code: AutoConfig reads config.json without lape_hf
        "model.onnx",
        "preprocessor_config.json",
    ]
    assert json.loads((root / "onnx" / "config.json").read_text())["id2label"]["3"] == "three"
    assert sorted(path.name for path in root.iterdir()) == ["model", "onnx"]  # no staging directory left


def test_export_refuses_an_existing_output_unless_overwrite(onnx_export, capsys):
    _, root = onnx_export
    main = load_script("export").main
    before = (root / "onnx" / "model.onnx").stat().st_mtime_ns
    assert main(["--model", str(root / "model"), "--output_dir", str(root / "onnx")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "already exists" in error and "--overwrite" in error
    assert len(error.splitlines()) == 1
    assert (root / "onnx" / "model.onnx").stat().st_mtime_ns == before


def test_torch_export_program_equals_eager_and_replaces_with_overwrite(onnx_export):
    model, root = onnx_export
    output = root / "pt2"
    output.mkdir()
    (output / "old.txt").write_text("replaced")
    main = load_script("export").main
    status = main(["--model", str(root / "model"), "--format=torch_export", f"--output_dir={output}", "--overwrite"])
    assert status == 0
    assert {"config.json", "model.pt2", "preprocessor_config.json"} <= {path.name for path in output.iterdir()}
    assert not (output / "old.txt").exists()
    program = torch.export.load(output / "model.pt2").module()
    for batch_size, (height, width) in zip(BATCH_SIZES, RESOLUTIONS, strict=True):
        pixel_values = torch.randn(batch_size, 3, height, width)
        torch.testing.assert_close(program(pixel_values), eager_logits(model, pixel_values), rtol=0, atol=TOLERANCE)


def test_readme_onnxruntime_example_runs_as_written(onnx_export, tmp_path, capsys, monkeypatch):
    model, root = onnx_export
    (example,) = python_blocks("Export")
    (tmp_path / "outputs").mkdir()
    os.symlink(root / "onnx", tmp_path / "outputs" / "demo-onnx")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    image.save(tmp_path / "digit.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md#export", "exec"), {})
    processor = build_image_processor(model.config)
    expected = eager_logits(model, processor(image, return_tensors="pt").pixel_values).argmax().item()
    assert capsys.readouterr().out.strip().splitlines()[-1] == model.config.id2label[expected]


@pytest.mark.parametrize(
    "setting,message",
    [
        (dict(attn_implementation="flash_attention_2"), "attn_implementation='flash_attention_2' cannot be exported"),
        (dict(output_attentions=True), "sets output_attentions=True; the exported graph returns the logits only"),
        (dict(output_hidden_states=True), "sets output_hidden_states=True"),
    ],
)
def test_what_cannot_be_exported_is_named(setting, message):
    model = LapeViTForImageClassification(tiny_config(attn_implementation="eager")).eval()
    if "attn_implementation" in setting:  # flash attention is not installed here: set as loading it would
        model.config._attn_implementation = setting["attn_implementation"]
    else:
        setattr(model.config, *next(iter(setting.items())))
    with pytest.raises(ValueError, match=message):
        check_exportable(model)


def test_an_unknown_format_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        load_script("export").main(["--model", str(tmp_path), "--format", "tflite", "--output_dir", str(tmp_path)])
    assert exited.value.code == 2
    assert "--format 'tflite' is not known; allowed: onnx, torch_export" in capsys.readouterr().err


# Every join x PE type, the relative position biases, the convolutional tokenizer and the poolers (slow: ~20 s each).
SWEEP = [
    dict(pe_join=join, position_embedding_type=pe)
    for join, pe in itertools.product(
        ("lape", "lape_shared", "add", "share"), ("learnable", "sinusoidal_1d", "sinusoidal_2d", "none")
    )
] + [
    dict(pe_join="unshare"),
    dict(relative_position_bias="plain"),
    dict(relative_position_bias="lape", pe_join="add"),
    dict(pooler_type="sequence"),
    dict(pooler_type="mean"),
    dict(use_distillation_token=True),
    dict(TINY_CCT),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", SWEEP, ids=lambda overrides: ",".join(f"{k}={v}" for k, v in overrides.items()))
def test_every_model_form_exports_to_onnx_equal_to_eager(tmp_path, overrides):
    model = saved_classifier(tmp_path / "model", **overrides)
    onnx_path = write_graph(model, "onnx", tmp_path)
    assert max_onnx_difference(model, onnx_path) <= TOLERANCE


def test_an_onnx_folder_in_the_model_directory_is_published_and_shown_on_the_card(onnx_export, tmp_path):
    from lape_hf.hub import prepare_upload

    _, root = onnx_export
    template = Path(__file__).resolve().parent.parent / "model_cards" / "template.md"
    model_dir = tmp_path / "model"
    shutil.copytree(root / "model", model_dir)
    without = prepare_upload(model_dir, "org/tiny", template_path=template)
    shutil.copytree(root / "onnx", model_dir / "onnx")
    with_onnx = prepare_upload(model_dir, "org/tiny", template_path=template)
    assert "onnx/model.onnx" in with_onnx.repository_files() and "onnx/config.json" in with_onnx.repository_files()
    assert "onnxruntime.InferenceSession" in str(with_onnx.card)
    assert "onnxruntime" not in str(without.card)
    assert "scripts/export.py --model org/tiny" in str(without.card)  # the routes a user can take from here
    assert "--lora_r 8" in str(without.card)
