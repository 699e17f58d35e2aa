"""Prompt templates: Alpaca (with / without input), plain, custom with validation."""

from __future__ import annotations

import pytest

from flexlora.data.templates import check_template, format_prompt, format_target
from flexlora.data.types import Example
from flexlora.errors import FlexLoraError

WITH_INPUT = Example("Sort the numbers.", "3 1 2", "1 2 3", "Sorting")
NO_INPUT = Example("Name a colour.", "", "blue", "Generation")


def test_alpaca_with_input_ends_where_the_response_starts() -> None:
    prompt = format_prompt(WITH_INPUT, "alpaca")
    assert prompt == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSort the numbers.\n\n### Input:\n3 1 2\n\n### Response:"
    )
    assert format_target(WITH_INPUT, "alpaca") == "1 2 3"


def test_alpaca_without_input_uses_the_no_input_variant() -> None:
    prompt = format_prompt(NO_INPUT, "alpaca")
    assert prompt == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nName a colour.\n\n### Response:"
    )
    assert "### Input" not in prompt


def test_plain_template() -> None:
    assert format_prompt(WITH_INPUT, "plain") == "Sort the numbers.\n3 1 2\n"
    assert format_prompt(NO_INPUT, "plain") == "Name a colour.\n"
    assert format_target(NO_INPUT, "plain") == "blue"


def test_custom_template_splits_at_output_and_keeps_the_suffix_in_the_target() -> None:
    custom = 'Q: {instruction} [{input}]\nA: "{output}"'
    assert format_prompt(WITH_INPUT, "custom", custom) == 'Q: Sort the numbers. [3 1 2]\nA: "'
    assert format_target(WITH_INPUT, "custom", custom) == '1 2 3"'


def test_custom_template_without_output_is_all_prompt_and_escapes_braces() -> None:
    custom = "{{task}} {instruction} -> {input!r}:"
    assert format_prompt(WITH_INPUT, "custom", custom) == "{task} Sort the numbers. -> '3 1 2':"
    assert format_target(WITH_INPUT, "custom", custom) == "1 2 3"


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        ("{instruction} {answer}", "unknown placeholder {answer}"),
        ("{instruction} {}", "unknown placeholder {}"),
        ("{instruction} {0}", "unknown placeholder {0}"),
        ("{input.upper}", "unknown placeholder {input.upper}"),
        ("{output} {instruction}", "placeholder {instruction} after {output}"),
        ("just text {output}", "must use {instruction} or {input}"),
        ("{instruction", "data.custom_template is malformed"),
        ("{instruction} {output:>5}", "write {output} plainly"),
    ],
)
def test_custom_template_errors_name_the_placeholder(custom: str, message: str) -> None:
    with pytest.raises(FlexLoraError, match=r"data\.custom_template") as err:
        format_prompt(WITH_INPUT, "custom", custom)
    assert message in str(err.value)


def test_unknown_template_and_missing_custom() -> None:
    with pytest.raises(
        FlexLoraError, match=r"unknown template 'chatml' \(known: alpaca, plain, custom\)"
    ):
        check_template("chatml", None)
    with pytest.raises(FlexLoraError, match=r"data\.custom_template is required"):
        format_prompt(WITH_INPUT, "custom", None)
