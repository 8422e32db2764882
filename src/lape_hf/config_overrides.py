"""The one syntax for setting LapeViTConfig fields on a command line (`train.py` and `convert_checkpoint.py`).

    image_size=[16,32],qkv_bias=false,hidden_act=gelu,problem_type=null,id2label={"0":"cat","1":"dog"}

Items are split at the commas outside brackets, braces and double-quoted strings; each value is converted by the
field's declared type (true/false for a bool, null for an optional field, a JSON list for a list field, a JSON object
for a dict field, else int, float or str; a string may be JSON-quoted), and `LapeViTConfig` then checks the values
together.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import Sequence
from typing import Any, Literal

import torch

from .models.lape_vit.configuration_lape_vit import LapeViTConfig

CONFIG_OVERRIDES_HELP = (
    "LapeViTConfig fields as name=value, comma-separated, e.g. 'image_size=16,hidden_size=128,qkv_bias=false' "
    "(a list as [16,32], null for an optional field)."
)

_OPENING, _CLOSING = "[({", "])}"


def _split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets, braces and double-quoted strings: 'a=1,image_size=[16,32]' ->
    ['a=1', 'image_size=[16,32]']. An unbalanced closing bracket does not hide the commas after it."""
    items, depth, start, quoted = [], 0, 0, False
    for index, character in enumerate(text):
        if character == '"' and text[index - 1 : index] != "\\":
            quoted = not quoted
        elif not quoted:
            depth = max(0, depth + (character in _OPENING) - (character in _CLOSING))
            if character == "," and depth == 0:
                items.append(text[start:index])
                start = index + 1
    return [*items, text[start:]]


@functools.cache
def _config_field_types() -> dict[str, Any]:
    """The declared type of every LapeViTConfig dataclass field (class constants such as model_type are not fields)."""
    hints = typing.get_type_hints(LapeViTConfig, localns={"torch": torch})
    return {field_.name: hints[field_.name] for field_ in dataclasses.fields(LapeViTConfig)}


def _json_value(name: str, text: str, kind: type, example: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"config_overrides: {name}={text!r} is not a {kind.__name__} such as {example}: {error}."
        ) from None
    if not isinstance(value, kind):
        raise ValueError(f"config_overrides: {name}={text!r} is not a {kind.__name__} such as {example}.")
    return value


def _convert_override(name: str, text: str) -> Any:
    """`text` as a value of the config field's declared type (bool, int, float, str, a list or a dict)."""
    hint = _config_field_types()[name]
    allowed = set(typing.get_args(hint)) or {hint}
    origins = {typing.get_origin(kind) or kind for kind in allowed}
    text = text.strip()
    if type(None) in allowed and text.lower() in ("null", "none"):
        return None
    if bool in allowed:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"config_overrides: {name}={text!r} must be true or false.")
        return text.lower() == "true"
    if text.startswith("[") and origins & {list, tuple}:
        return _json_value(name, text, list, "[16,32]")
    if dict in origins:
        return _json_value(name, text, dict, '{"0":"cat"}')
    for kind in (int, float):
        if kind in allowed:
            try:
                return kind(text)
            except ValueError:
                continue
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = _json_value(name, text, str, '"gelu"')
    if str in allowed or any(text in typing.get_args(kind) for kind in allowed if typing.get_origin(kind) is Literal):
        return text
    raise ValueError(f"config_overrides: {name}={text!r} is not of the field's type ({hint}).")


def parse_config_overrides(text: str | Sequence[str] | None) -> dict[str, Any]:
    """'a=1,b=gelu,c=true,image_size=[16,32]' -> {'a': 1, 'b': 'gelu', 'c': True, 'image_size': [16, 32]}.

    A sequence of such strings (a repeated flag) is read string by string. Not transformers'
    `PretrainedConfig.update_from_string`, which does not fit here: it splits inside a list, takes a value's type from
    the current value (so image_size cannot become a [height, width] pair), and sets fields one at a time on a built
    config, where the overrides must build one config together (a preset's image_size and patch_size change as a
    pair).
    """
    if text is not None and not isinstance(text, str):
        return {key: value for flag in text for key, value in parse_config_overrides(flag).items()}
    if not text:
        return {}
    overrides = {}
    for item in _split_top_level(text):
        key, separator, value = item.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ValueError(f"config_overrides item {item!r} is not of the form name=value (in {text!r}).")
        if key not in _config_field_types():
            allowed = sorted(_config_field_types())
            raise ValueError(f"config_overrides: {key!r} is not a LapeViTConfig field; allowed: {allowed}.")
        overrides[key] = _convert_override(key, value)
    return overrides
