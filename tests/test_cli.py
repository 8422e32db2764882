"""`lape_hf.cli`: the one error convention and argument parsing every script shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from script_loader import load_script

from lape_hf.cli import UserError, parse_args, script


@dataclass
class Arguments:
    model: str | None = field(default=None, metadata={"help": "a model"})
    output_dir: str = field(default="out", metadata={"aliases": ["--output"], "help": "where"})
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch_size={self.batch_size} must be at least 1.")


def test_user_error_is_one_line_on_stderr_and_exit_status_2(capsys):
    @script
    def main():
        raise UserError("--size=huge is not one of tiny, small.")

    assert main() == 2
    assert capsys.readouterr().err == "error: --size=huge is not one of tiny, small.\n"


def test_a_value_the_arguments_refuse_is_a_parser_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(Arguments, ["--model", "m", "--batch_size", "0"], description=None)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith("error: --batch_size=0 must be at least 1.\n")


def test_missing_user_path_is_a_user_error(tmp_path, capsys):
    @script
    def main():
        (tmp_path / "absent.txt").read_text()
        return 0

    assert main() == 2
    assert capsys.readouterr().err.startswith("error: [Errno 2] No such file or directory")


def test_multi_line_message_is_printed_on_one_line(capsys):
    @script
    def main():
        raise ValueError("the directory is incomplete:\n  - config.json\n  - model.safetensors")

    assert main() == 2
    assert capsys.readouterr().err == "error: the directory is incomplete:; - config.json; - model.safetensors\n"


def test_an_unreachable_hub_dataset_is_a_user_error(capsys):
    @script
    def main():  # what datasets.load_dataset raises offline or for a name that does not exist
        raise ConnectionError("Couldn't reach 'nobody/nothing' on the Hub (OfflineModeIsEnabled)")

    assert main() == 2
    assert capsys.readouterr().err == "error: Couldn't reach 'nobody/nothing' on the Hub (OfflineModeIsEnabled)\n"


def test_bug_keeps_its_traceback():
    @script
    def main():
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        main()


def test_user_error_traceback_on_request(monkeypatch):
    monkeypatch.setenv("LAPE_HF_TRACEBACK", "1")

    @script
    def main():
        raise UserError("bad value")

    with pytest.raises(UserError):
        main()


def test_ctrl_c_is_one_line_and_exit_status_130(capsys):
    @script
    def main():
        raise KeyboardInterrupt

    assert main() == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_parse_args_accepts_underscores_hyphens_and_aliases():
    parsed = parse_args(Arguments, ["--model", "m", "--batch-size", "3", "--output", "o"], description=None)
    assert parsed == Arguments(model="m", output_dir="o", batch_size=3)
    assert parse_args(Arguments, ["--model=m", "--output_dir=d"], description=None).output_dir == "d"


def test_positional_spelling_of_a_flag():
    assert parse_args(Arguments, ["m"], description=None, positional="model").model == "m"
    assert parse_args(Arguments, ["--model", "m"], description=None, positional="model").model == "m"
    with pytest.raises(SystemExit) as exit_info:
        parse_args(Arguments, ["m", "--model", "n"], description=None, positional="model")
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        parse_args(Arguments, [], description=None, positional="model")


@dataclass
class ListArguments:
    inputs: list[str] = field(default_factory=list)


def test_positional_list_field():
    assert parse_args(ListArguments, ["a", "b"], description=None, positional="inputs").inputs == ["a", "b"]
    assert parse_args(ListArguments, ["--inputs", "a"], description=None, positional="inputs").inputs == ["a"]


# The names every script spells the same way for the same thing.
SHARED_NAMES = {
    "train": ["--output_dir", "--overwrite_output_dir", "--model_name_or_path", "--per_device_train_batch_size"],
    "compare_joins": ["--output_root", "--seeds"],
    "predict": ["--model", "--batch_size", "--output_file", "--revision"],
    "push_to_hub": ["--model", "--repo_id", "--revision", "--dry_run"],
    "convert_checkpoint": ["--checkpoint", "--output_dir", "--pe_join", "--preset", "--config_overrides"],
    "visualize_pe": ["--model", "--output_dir", "--summary_json"],
    "benchmark": ["--batch_size", "--output_file", "--no_timm"],
}


@pytest.mark.parametrize("name", sorted(SHARED_NAMES))
def test_every_script_has_help_with_the_shared_names(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(name).main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in SHARED_NAMES[name]:
        assert flag in text, f"{name}.py --help does not list {flag}"


def test_old_hyphenated_spellings_and_aliases_still_parse(tmp_path):
    benchmark = load_script("benchmark")
    old = benchmark.parse_args(["--batch-size", "3", "--output", "x.json", "--no-timm", "--no-memory"])
    new = benchmark.parse_args(["--batch_size", "3", "--output_file", "x.json", "--no_timm", "--no_memory"])
    assert old == new and (old.batch_size, old.timm, old.memory) == (3, False, False)
    convert = load_script("convert_checkpoint")
    arguments = [
        "--source",
        "timm",
        "--checkpoint",
        "c.pth",
        "--output",
        "out",
        "--set",
        "qkv_bias=true",
        "--set",
        "image_size=[2,4]",
    ]
    parsed = convert.parse_args(convert.ConvertArguments, arguments, description=None)
    assert parsed.output_dir == Path("out") and parsed.overrides() == {"qkv_bias": True, "image_size": [2, 4]}
