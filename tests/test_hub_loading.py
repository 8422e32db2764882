"""Loading by Hub id, offline, through the real Hub resolution path: the published files sit in a temporary Hub cache
(`models--ORG--NAME/snapshots/<hash>/`, `refs/main`) and HF_HUB_OFFLINE=1. With lape_hf installed the package's
classes load; in a fresh interpreter that cannot import lape_hf, `trust_remote_code=True` loads the code stored in
the repository. Both give the same logits as the model the files were saved from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_helpers import LABELS, TEMPLATE, go_offline, run_without_lape_hf, save_tiny_checkpoint, tiny_results
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, ViTImageProcessor, pipeline

from lape_hf import LapeViTConfig, LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher
from lape_hf.hub import install_in_hub_cache, prepare_upload

# Repository id -> (classifier class, config overrides): the plain and the distilled (DeiT) classifier.
REPOSITORIES = {
    "lape-test/tiny": (LapeViTForImageClassification, {}),
    "lape-test/tiny-distilled": (LapeViTForImageClassificationWithTeacher, {"use_distillation_token": True}),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    """Both repositories, published to an offline Hub cache, with a test image, fixed pixel values and, per
    repository, the logits and top-3 predictions of the model loaded straight from its directory."""
    root = tmp_path_factory.mktemp("hub_loading")
    cache = root / "hub"
    pixels = np.random.default_rng(1).integers(0, 256, size=(36, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "image.png")
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.save(root / "pixel_values.npy", pixel_values.numpy())
    expected = {}
    for repo_id, (model_class, overrides) in REPOSITORIES.items():
        model_dir = save_tiny_checkpoint(
            root / repo_id.split("/")[1], results=tiny_results(), model_class=model_class, **overrides
        )
        plan = prepare_upload(model_dir, repo_id, template_path=TEMPLATE)
        install_in_hub_cache(plan.repository_files(), repo_id, cache)
        model = model_class.from_pretrained(model_dir).eval()
        processor = ViTImageProcessor.from_pretrained(model_dir)
        with torch.no_grad():
            logits = model(pixel_values).logits
            image_logits = model(**processor(images=Image.open(root / "image.png"), return_tensors="pt")).logits[0]
        probabilities = image_logits.softmax(-1)
        top = probabilities.argsort(descending=True).tolist()
        expected[repo_id] = {
            "logits": logits,
            "top": [(LABELS[i], probabilities[i].item()) for i in top],
        }
    return root, cache, pixel_values, expected


@pytest.mark.parametrize("repo_id", list(REPOSITORIES))
def test_loading_by_hub_id_with_lape_hf(hub, repo_id: str, monkeypatch: pytest.MonkeyPatch):
    root, cache, pixel_values, expected = hub
    go_offline(monkeypatch, cache)
    model_class, _ = REPOSITORIES[repo_id]

    config = AutoConfig.from_pretrained(repo_id)
    model = AutoModelForImageClassification.from_pretrained(repo_id).eval()
    assert type(config) is LapeViTConfig
    assert type(model) is model_class, "the package's class, not the repository's code"
    assert type(model_class.from_pretrained(repo_id)) is model_class
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, expected[repo_id]["logits"], rtol=0, atol=0)
    assert isinstance(AutoImageProcessor.from_pretrained(repo_id), ViTImageProcessor)

    classifier = pipeline("image-classification", model=repo_id)
    predictions = classifier(str(root / "image.png"), top_k=3)
    assert [p["label"] for p in predictions] == [label for label, _ in expected[repo_id]["top"]]
    assert [p["score"] for p in predictions] == pytest.approx([s for _, s in expected[repo_id]["top"]], abs=1e-6)


def test_an_id_missing_from_the_offline_cache_is_not_found(hub, monkeypatch: pytest.MonkeyPatch):
    """The control for the test above: offline, only the cache answers."""
    _, cache, _, _ = hub
    go_offline(monkeypatch, cache)
    with pytest.raises(OSError, match="couldn.t find them in the cached files"):
        AutoConfig.from_pretrained("lape-test/not-published")


REMOTE_CODE_CLIENT = """
import json
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForImageClassification, pipeline

pixel_values = torch.from_numpy(np.load("pixel_values.npy"))
report = {}
for repo_id in REPO_IDS:
    config = AutoConfig.from_pretrained(repo_id, trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(pixel_values).logits
    np.save(repo_id.split("/")[1] + "-logits.npy", logits.numpy())
    classifier = pipeline("image-classification", model=repo_id, trust_remote_code=True)
    report[repo_id] = {
        "config_module": type(config).__module__,
        "model_class": type(model).__name__,
        "model_module": type(model).__module__,
        "predictions": classifier("image.png", top_k=3),
    }
print(json.dumps(report))
"""


def test_loading_by_hub_id_with_remote_code_where_lape_hf_is_not_installed(hub):
    root, cache, _, expected = hub
    code = f"REPO_IDS = {list(REPOSITORIES)!r}\n" + REMOTE_CODE_CLIENT
    completed = run_without_lape_hf(code, cwd=root, hub_cache=cache)
    report = json.loads(completed.stdout.strip().splitlines()[-1])

    for repo_id, (model_class, _) in REPOSITORIES.items():
        loaded = report[repo_id]
        assert loaded["model_class"] == model_class.__name__
        # The classes come from the repository's files, imported by transformers as dynamic modules.
        assert loaded["model_module"].startswith("transformers_modules.")
        assert loaded["config_module"].startswith("transformers_modules.")
        logits = torch.from_numpy(np.load(root / f"{repo_id.split('/')[1]}-logits.npy"))
        torch.testing.assert_close(logits, expected[repo_id]["logits"], rtol=0, atol=1e-6)
        assert [p["label"] for p in loaded["predictions"]] == [label for label, _ in expected[repo_id]["top"]]
        scores = [p["score"] for p in loaded["predictions"]]
        assert scores == pytest.approx([score for _, score in expected[repo_id]["top"]], abs=1e-6)


def test_the_readme_example_of_loading_by_hub_id_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n## Publishing and inference from the Hub\n", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    (repo_id,) = set(re.findall(r'"([\w-]+/[\w-]+)"', example))
    model_dir = save_tiny_checkpoint(tmp_path / "model", results=tiny_results())
    plan = prepare_upload(model_dir, repo_id, template_path=TEMPLATE)
    install_in_hub_cache(plan.repository_files(), repo_id, tmp_path / "hub")
    go_offline(monkeypatch, tmp_path / "hub")

    namespace: dict = {}
    exec(compile(example, "README.md#publishing", "exec"), namespace)
    assert type(namespace["model"]) is LapeViTForImageClassification
    assert namespace["classifier"].model.config.id2label == dict(enumerate(LABELS))
