"""Prompt templates: an `Example` -> the prompt text and the target text.

The prompt ends exactly where the response starts; the training text is
`prompt + target` with the tokenizer's EOS appended after it (see flexlora.data.tokenize).

- `alpaca` (default): the Stanford Alpaca prompt format, which the FlexLoRA authors'
  code (FederatedScope-LLM) also uses: a with-input variant and a no-input variant,
  the prompt ending in "### Response:" and the target being the bare output.
- `plain`: the instruction, then the input, each on its own line; nothing else.
- `custom`: a `str.format` string with the placeholders {instruction}, {input} and
  optionally {output}. The prompt is what comes before {output}; literal text after
  {output} (e.g. a closing quote) is part of the target. Without {output} the whole
  string is the prompt and the target is the bare output.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass

from flexlora.data.types import Example
from flexlora.errors import FlexLoraError

# The Stanford Alpaca prompt format (as in the FlexLoRA authors' code): kept byte for
# byte, because the paper's numbers were measured with exactly these prompts.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

TEMPLATES = ("alpaca", "plain", "custom")
PLACEHOLDERS = ("instruction", "input", "output")


@dataclass(frozen=True)
class _Field:
    """One placeholder of a parsed custom template."""

    name: str
    conversion: str | None
    format_spec: str


# A parsed custom template: literal text and fields, in order.
_Part = str | _Field


@dataclass(frozen=True)
class _CustomTemplate:
    prompt: tuple[_Part, ...]
    """Parts before {output} (or all of them when there is no {output})."""
    suffix: str
    """Literal text after {output}: appended to the target."""


@functools.lru_cache(maxsize=32)
def parse_custom_template(custom: str) -> _CustomTemplate:
    """Validate a custom template and split it at {output}.

    Raises FlexLoraError naming the offending placeholder: unknown names, positional or
    attribute fields, a repeated {output}, placeholders after {output}, no
    {instruction} nor {input}, or unbalanced braces.
    """
    try:
        parsed = list(string.Formatter().parse(custom))
    except ValueError as e:
        raise FlexLoraError(f"data.custom_template is malformed: {e} in {custom!r}") from e
    prompt: list[_Part] = []
    suffix: list[str] = []
    seen_output = False
    used: set[str] = set()
    for literal, name, spec, conversion in parsed:
        if seen_output:
            if name is not None:
                raise FlexLoraError(
                    f"data.custom_template: placeholder {{{name}}} after {{output}}; "
                    "the target must end the template"
                )
            suffix.append(literal)
            continue
        if literal:
            prompt.append(literal)
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            shown = "{}" if name == "" else f"{{{name}}}"
            raise FlexLoraError(
                f"data.custom_template: unknown placeholder {shown} "
                "(allowed: {instruction}, {input}, {output})"
            )
        if name == "output":
            if spec or conversion:
                raise FlexLoraError(
                    "data.custom_template: write {output} plainly, without a format"
                )
            seen_output = True
            continue
        used.add(name)
        prompt.append(_Field(name, conversion, spec or ""))
    if not used:
        raise FlexLoraError("data.custom_template must use {instruction} or {input}")
    return _CustomTemplate(tuple(prompt), "".join(suffix))


def _render(parts: tuple[_Part, ...], example: Example) -> str:
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value: object = getattr(example, part.name)
        if part.conversion == "r":
            value = repr(value)
        elif part.conversion == "a":
            value = ascii(value)
        out.append(format(value, part.format_spec))
    return "".join(out)


def check_template(template: str, custom: str | None) -> None:
    """Raise FlexLoraError if `template` is unknown or a custom template is invalid."""
    if template not in TEMPLATES:
        raise FlexLoraError(
            f"data.template: unknown template {template!r} (known: {', '.join(TEMPLATES)})"
        )
    if template == "custom":
        if not custom:
            raise FlexLoraError("data.custom_template is required when data.template=custom")
        parse_custom_template(custom)


def format_prompt(example: Example, template: str, custom: str | None = None) -> str:
    """The prompt text of `example`: everything the model reads before its response."""
    if template == "alpaca":
        if example.input:
            return ALPACA_WITH_INPUT.format(instruction=example.instruction, input=example.input)
        return ALPACA_NO_INPUT.format(instruction=example.instruction)
    if template == "plain":
        if example.input:
            return f"{example.instruction}\n{example.input}\n"
        return f"{example.instruction}\n"
    check_template(template, custom)  # unknown names, or custom without a valid string
    return _render(parse_custom_template(custom or "").prompt, example)


def format_target(example: Example, template: str, custom: str | None = None) -> str:
    """The response text the model learns (EOS is appended at tokenisation)."""
    if template == "custom" and custom:
        return example.output + parse_custom_template(custom).suffix
    return example.output
