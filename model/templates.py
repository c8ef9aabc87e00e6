"""Prompt templates: how an instruction record becomes the text a model continues.

A fine-tuned checkpoint stores its template as `template.json`, so `model.generate --instruction`
renders prompts exactly as fine-tuning did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.errors import PipelineError

TEMPLATE_FILE = "template.json"


@dataclass(frozen=True)
class Template:
    """How a record becomes a prompt: `prompt` (no input) or `prompt_with_input`, with {instruction} and {input}."""

    name: str
    prompt: str
    prompt_with_input: str

    def to_dict(self) -> dict:
        return {"name": self.name, "prompt": self.prompt, "prompt_with_input": self.prompt_with_input, "response_ends_with": "eos"}


DEFAULT_TEMPLATE = Template(
    name="tinygpt-instruct-v1",
    prompt="### Instruction:\n{instruction}\n\n### Response:\n",
    prompt_with_input="### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
)


def render_prompt(instruction: str, input: Optional[str] = None, template: Template = DEFAULT_TEMPLATE) -> str:
    """The prompt the model sees; the response follows it directly. An empty `input` counts as none."""
    instruction = instruction.strip()
    if input is not None and input.strip():
        return template.prompt_with_input.replace("{instruction}", instruction).replace("{input}", input.strip())
    return template.prompt.replace("{instruction}", instruction)


def load_template(checkpoint: str | Path) -> Template:
    """The template saved beside a fine-tuned checkpoint; one-line errors when absent or malformed."""
    path = Path(checkpoint) / TEMPLATE_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: not found (--instruction needs a checkpoint written by `python -m model.finetune`)")
    try:
        data = json.loads(path.read_text())
        template = Template(name=str(data["name"]), prompt=data["prompt"], prompt_with_input=data["prompt_with_input"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: not a prompt template ({type(exc).__name__}: {exc})") from None
    if not isinstance(template.prompt, str) or not isinstance(template.prompt_with_input, str):
        raise PipelineError(f"{path}: 'prompt' and 'prompt_with_input' must be strings")
    return template
