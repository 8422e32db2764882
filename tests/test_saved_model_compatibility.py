"""Models saved by lape_hf 0.1.0 (the layout before models/lape_vit/) still load and give the same logits: with
today's classes, as Hub remote code (today's code files) without lape_hf, and through `pipeline()`. The fixture and
the logits it must give were written by the old code (see its README)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from hub_helpers import run_without_lape_hf
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from lape_hf import LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher
from lape_hf.models import lape_vit

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "saved_0_1"
REFERENCE = json.loads((FIXTURE / "reference_logits.json").read_text())
PIXEL_VALUES = torch.tensor(REFERENCE["pixel_values"])
SAVED_MODELS = {
    "lape_rpe": LapeViTForImageClassification,
    "add_cct": LapeViTForImageClassification,
    "distilled": LapeViTForImageClassificationWithTeacher,
}
CODE_FILES = ("configuration_lape_vit.py", "modeling_lape_vit.py")

REMOTE_CODE_LOADING = textwrap.dedent(
    """
    import json
    import torch
    from transformers import AutoModelForImageClassification

    pixel_values = torch.load("pixel_values.pt")
    report = {}
    for directory in json.loads(DIRECTORIES):
        model = AutoModelForImageClassification.from_pretrained(directory, trust_remote_code=True).eval()
        with torch.no_grad():
            report[directory] = {"module": type(model).__module__, "logits": model(pixel_values).logits.tolist()}
    print(json.dumps(report))
    """
)


def test_fixture_was_written_by_the_old_code_and_is_small():
    assert REFERENCE["made_with"]["lape_hf"] == "0.1.0"
    assert set(REFERENCE["logits"]) == set(SAVED_MODELS)
    assert sum(path.stat().st_size for path in FIXTURE.rglob("*") if path.is_file()) < 1_000_000


@pytest.mark.parametrize("name", sorted(SAVED_MODELS))
def test_saved_model_loads_with_todays_classes_and_gives_the_stored_logits(name):
    model, loading_info = AutoModelForImageClassification.from_pretrained(FIXTURE / name, output_loading_info=True)
    assert type(model) is SAVED_MODELS[name]
    assert all(not keys for keys in loading_info.values()), loading_info
    with torch.no_grad():
        logits = model.eval()(PIXEL_VALUES).logits
    torch.testing.assert_close(logits, torch.tensor(REFERENCE["logits"][name]), rtol=0, atol=1e-6)


def test_saved_models_load_as_remote_code_without_lape_hf(tmp_path):
    """With today's code files beside the old weights and config (what a Hub repository holds once the code is pushed
    anew), the models give the stored logits where lape_hf cannot be imported."""
    directories = []
    for name in SAVED_MODELS:
        shutil.copytree(FIXTURE / name, tmp_path / name)
        for code_file in CODE_FILES:
            shutil.copy(Path(lape_vit.__file__).parent / code_file, tmp_path / name / code_file)
        directories.append(str(tmp_path / name))
    torch.save(PIXEL_VALUES, tmp_path / "pixel_values.pt")
    code = f"DIRECTORIES = {json.dumps(json.dumps(directories))}\n" + REMOTE_CODE_LOADING
    completed = run_without_lape_hf(code, cwd=tmp_path, hub_cache=tmp_path / "hub", timeout=600)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert sorted(report) == sorted(directories)
    for directory, result in report.items():
        assert result["module"].startswith("transformers_modules."), result["module"]
        expected = torch.tensor(REFERENCE["logits"][Path(directory).name])
        torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-6, msg=directory)


@pytest.mark.parametrize("name", sorted(SAVED_MODELS))
def test_pipeline_classifies_with_a_saved_model(name):
    image = Image.fromarray((torch.rand(20, 24, 3) * 255).to(torch.uint8).numpy())
    predictions = pipeline("image-classification", model=str(FIXTURE / name), top_k=3)(image)
    assert sorted(prediction["label"] for prediction in predictions) == ["bird", "cat", "dog"]
    assert sum(prediction["score"] for prediction in predictions) == pytest.approx(1.0, abs=1e-5)
    model = AutoModelForImageClassification.from_pretrained(FIXTURE / name).eval()
    pixel_values = AutoImageProcessor.from_pretrained(FIXTURE / name)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.config.id2label[model(pixel_values).logits.argmax(-1).item()]
    assert predictions[0]["label"] == expected
