"""The package's shape: `import lape_hf` is the model family only; the other rooms load when used; old paths warn."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

import lape_hf


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(json.loads(output.splitlines()[-1]))


def test_import_lape_hf_loads_the_model_family_and_nothing_of_the_other_rooms():
    modules = _modules_after("import lape_hf")
    ours = {name for name in modules if name.startswith("lape_hf.")}
    assert ours <= {
        "lape_hf._deprecated_modules",
        "lape_hf.models",
        "lape_hf.models.lape_vit",
        "lape_hf.models.lape_vit.configuration_lape_vit",
        "lape_hf.models.lape_vit.modeling_lape_vit",
        "lape_hf.models.lape_vit.image_processing_lape_vit",
    }, ours
    for heavy in ("datasets", "evaluate", "matplotlib", "sklearn", "lape_hf.conversion"):
        assert heavy not in modules, heavy


def test_import_lape_hf_registers_the_auto_classes():
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.for_model("lape_vit", num_hidden_layers=1, hidden_size=32, num_attention_heads=2)
    assert type(config) is lape_hf.LapeViTConfig
    model = AutoModelForImageClassification.from_config(config)
    assert type(model) is lape_hf.LapeViTForImageClassification


def test_conversion_names_load_on_first_use_from_the_top_level():
    modules = _modules_after("import lape_hf\nlape_hf.convert_official_state_dict")
    assert "lape_hf.conversion" in modules
    from lape_hf.conversion import convert_official_state_dict

    assert lape_hf.convert_official_state_dict is convert_official_state_dict
    assert "convert_official_state_dict" in dir(lape_hf)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        lape_hf.not_a_name  # noqa: B018


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("lape_hf.data", "lape_hf.training.data"),
        ("lape_hf.model_card", "lape_hf.hub.model_card"),
        ("lape_hf.configuration_lape_vit", "lape_hf.models.lape_vit.configuration_lape_vit"),
    ],
)
def test_a_moved_module_still_imports_and_says_where_it_went(old, new):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = __import__(old, fromlist=["_"])
    assert module is sys.modules[new]
    assert any(issubclass(w.category, FutureWarning) and new in str(w.message) for w in caught)


def test_the_version_comes_from_the_installed_metadata():
    from importlib.metadata import version

    assert lape_hf.__version__ == version("lape_hf")
