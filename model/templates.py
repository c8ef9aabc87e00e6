"""Prompt templates: how a conversation becomes the text a model reads, and which part of it is learned.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str}`;
an Alpaca record is one user message (its `instruction`, with the optional `input` as the message's
`"input"`) and one assistant message. Rendering gives segments: `prompt` text (never a target),
`response` text (a target) and the `stop` that ends each response (a target: the model learns to stop).

Built-in templates (`TEMPLATES`) are format strings, `{content}` and `{input}` marking where text
goes: `tinygpt-instruct-v1` (the default), `alpaca`, `llama2`, `llama3`, `chatml`. Template `model`
is a model folder's own jinja chat template (`chat_template.jinja`, or `chat_template` in
tokenizer_config.json), rendered in jinja2's sandbox.

A fine-tuned checkpoint stores its template as `template.json`, so `model.generate --instruction`
renders prompts exactly as fine-tuning did and stops where responses were taught to end.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from model.folders import TEMPLATE_FILE, read_config
from pipeline.errors import PipelineError
from pipeline.tokenizer import CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG_FILE

PROMPT, RESPONSE, STOP = "prompt", "response", "stop"  # segment kinds; RESPONSE and STOP are learned
FIXED_DATE = datetime.datetime(2024, 7, 26)  # what `strftime_now` shows: renders do not change with the day

Segment = tuple[str, str]  # (text, kind)


@dataclass(frozen=True)
class Template:
    """How messages become text. An assistant turn is `assistant` (the end of every generation prompt,
    not learned), `response` (learned), the `stop` string (learned; None: the tokenizer's EOS token),
    then `after` (not learned). `chat_template` set (template `model`): jinja renders the messages
    instead of the format strings, and `stop` is the model's EOS text."""

    name: str
    user: str = "{content}\n"  # a user turn
    user_with_input: str = ""  # a user turn with an Alpaca `input` ({content}, {input}); "": input follows content
    assistant: str = ""  # opens an assistant turn
    response: str = "{content}"  # the learned reply text, before the stop
    stop: Optional[str] = None  # ends every response; None: the tokenizer's EOS token
    after: str = ""  # after the stop, before the next turn
    begin: str = ""  # before the first turn: a BOS text or a preamble
    system: str = "{content}\n\n"  # a system turn
    system_in_user: bool = False  # llama2: the system turn sits inside the first user turn
    chat_template: Optional[str] = None  # `model`: the jinja source
    bos_token: str = ""  # `model`: what the jinja template calls bos_token
    eos_token: str = ""  # `model`: what the jinja template calls eos_token
    source: str = ""  # `model`: the file the chat template came from

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_TEMPLATE = Template(
    name="tinygpt-instruct-v1",
    user="### Instruction:\n{content}\n\n",
    user_with_input="### Instruction:\n{content}\n\n### Input:\n{input}\n\n",
    assistant="### Response:\n",
    after="\n\n",
)
# Alpaca's layout (headers, EOS after the response) under a one-line preamble written for this project.
ALPACA = dataclasses.replace(DEFAULT_TEMPLATE, name="alpaca", begin="Carry out the instruction below in your response.\n\n")
LLAMA2 = Template(
    name="llama2",
    user="<s>[INST] {content} [/INST]",
    assistant=" ",
    response="{content} ",
    stop="</s>",
    system="<<SYS>>\n{content}\n<</SYS>>\n\n",
    system_in_user=True,
)
LLAMA3 = Template(
    name="llama3",
    begin="<|begin_of_text|>",
    system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
    user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant="<|start_header_id|>assistant<|end_header_id|>\n\n",
    stop="<|eot_id|>",
)
CHATML = Template(
    name="chatml",
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant="<|im_start|>assistant\n",
    stop="<|im_end|>",
    after="\n",
)
TEMPLATES = {t.name: t for t in (DEFAULT_TEMPLATE, ALPACA, LLAMA2, LLAMA3, CHATML)}
MODEL = "model"  # the template name that reads the model folder's own chat template


# ---- rendering --------------------------------------------------------------------------------------


def fill(fmt: str, **values: str) -> str:
    """`fmt` with each {name} replaced by values[name], in one pass (text inside a value stays as it is)."""
    return re.sub(r"\{(" + "|".join(values) + r")\}", lambda m: values[m.group(1)], fmt)


def instruction_messages(instruction: str, input: Optional[str] = None, output: Optional[str] = None) -> list[dict]:
    """An Alpaca record as messages; instruction and input are stripped and an empty input counts as none."""
    user = {"role": "user", "content": instruction.strip()}
    if input is not None and input.strip():
        user["input"] = input.strip()
    return [user] + ([{"role": "assistant", "content": output}] if output is not None else [])


def render_segments(messages: Sequence[dict], template: Template) -> list[Segment]:
    """The conversation as (text, kind) segments, up to the end of its last assistant turn; neighbouring
    prompt (or response) texts are joined, so each is tokenized as one piece."""
    segments = jinja_segments(messages, template) if template.chat_template else format_segments(messages, template)
    while segments and segments[-1][1] == PROMPT:  # nothing after the last response is ever predicted
        segments.pop()
    joined: list[Segment] = []
    for text, kind in segments:
        if joined and kind != STOP and joined[-1][1] == kind:
            joined[-1] = (joined[-1][0] + text, kind)
        elif text or kind == STOP:
            joined.append((text, kind))
    return joined


def render_prompt(instruction: str, input: Optional[str] = None, template: Template = DEFAULT_TEMPLATE) -> str:
    """The prompt of one instruction: the model's reply follows it directly. An empty `input` counts as none."""
    return generation_prompt(instruction_messages(instruction, input), template)


def generation_prompt(messages: Sequence[dict], template: Template) -> str:
    """The text of `messages` followed by the opening of an assistant turn."""
    if template.chat_template:
        return render_jinja(template, plain_messages(messages), add_generation_prompt=True)
    return "".join(text for text, _ in format_segments(messages, template)) + template.assistant


def prompt_segments(messages: Sequence[dict], template: Template) -> list[Segment]:
    """The segments of a conversation that ends with a user turn, up to the opening of the reply:
    what a multi-turn chat feeds the model, with the earlier replies and their stops as in training."""
    if not template.chat_template:
        return format_segments(messages, template) + [(template.assistant, PROMPT)]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    segments = jinja_segments(messages[: last + 1], template) if last >= 0 else []
    done = render_jinja(template, plain_messages(messages[: last + 1]), add_generation_prompt=False) if last >= 0 else ""
    prompt = render_jinja(template, plain_messages(messages), add_generation_prompt=True)
    if not prompt.startswith(done):
        raise PipelineError(f"{template.source or 'chat_template'}: the rendering of the last user turn does not extend the turns before it")
    return segments + [(prompt[len(done) :], PROMPT)]


def cut_at_stop(text: str, template: Template) -> str:
    """A generated reply up to its template's stop string (the model writes it when it is not one token)."""
    return text.split(template.stop, 1)[0] if template.stop else text


def user_text(template: Template, content: str, input: Optional[str]) -> str:
    """A user turn; an Alpaca input gets its own section, or follows the content after a blank line."""
    if input and template.user_with_input:
        return fill(template.user_with_input, content=content, input=input)
    return fill(template.user, content=f"{content}\n\n{input}" if input else content)


def format_segments(messages: Sequence[dict], template: Template) -> list[Segment]:
    """Segments of a built-in (format-string) template."""
    t = template
    segments: list[Segment] = [(t.begin, PROMPT)]
    system = ""  # llama2: waits for the next user turn
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system" and t.system_in_user:
            system = fill(t.system, content=content)
        elif role == "system":
            segments.append((fill(t.system, content=content), PROMPT))
        elif role == "user":
            segments.append((user_text(t, system + content, message.get("input")), PROMPT))
            system = ""
        else:
            segments += [(t.assistant, PROMPT), (fill(t.response, content=content), RESPONSE), (t.stop or "", STOP), (t.after, PROMPT)]
    return segments


# ---- jinja chat templates ------------------------------------------------------------------------------


def plain_messages(messages: Sequence[dict]) -> list[dict]:
    """Messages as chat templates expect them: role and content only (an Alpaca input joins the content)."""
    out = []
    for m in messages:
        content = f"{m['content']}\n\n{m['input']}" if m.get("input") else m["content"]
        out.append({"role": m["role"], "content": content})
    return out


def _raise(message: str):
    """`raise_exception` of Hugging Face chat templates: rendering fails with the template's message."""
    import jinja2

    raise jinja2.TemplateError(message)


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False, separators=None) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys, separators=separators)


@functools.lru_cache(maxsize=8)
def compile_jinja(source: str):
    """A chat template compiled as Hugging Face does: sandboxed, trim_blocks, lstrip_blocks, loop controls."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = FIXED_DATE.strftime
    return env.from_string(source)


def render_jinja(template: Template, messages: list[dict], add_generation_prompt: bool) -> str:
    """Render the chat template; its errors become one-line PipelineErrors naming where it came from."""
    import jinja2

    where = template.source or "chat_template"
    try:
        return compile_jinja(template.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=template.bos_token, eos_token=template.eos_token,
        )
    except jinja2.TemplateError as exc:
        raise PipelineError(f"{where}: chat_template: {type(exc).__name__}: {' '.join(str(exc).split())}") from None


def jinja_segments(messages: Sequence[dict], template: Template) -> list[Segment]:
    """Segments of a jinja template, found by rendering the conversation up to each assistant turn
    (with the generation prompt: the prompt; without: prompt + reply). The reply is learned up to
    and including the stop (EOS) text; what the template writes after it is not."""
    messages, stop = plain_messages(messages), template.stop
    segments: list[Segment] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_jinja(template, messages[:i], add_generation_prompt=True)
        full = render_jinja(template, messages[: i + 1], add_generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise PipelineError(
                f"{template.source or 'chat_template'}: the rendering of message {i + 1} does not extend the messages before it, "
                "so its prompt and reply cannot be told apart"
            )
        reply = full[len(prompt) :]
        end = reply.rfind(stop) if stop else -1
        if end < 0:  # the template writes no stop: the response ends with the tokenizer's EOS
            segments += [(prompt[len(done) :], PROMPT), (reply, RESPONSE), ("", STOP)]
        else:
            segments += [(prompt[len(done) :], PROMPT), (reply[:end], RESPONSE), (stop, STOP), (reply[end + len(stop) :], PROMPT)]
        done = full
    return segments


def _token_text(value) -> str:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def find_model_template(folders: Sequence[Path]) -> Optional[Template]:
    """Template `model`: the chat template of the first of `folders` that has one
    (tokenizer_config.json's `chat_template`, else chat_template.jinja); its EOS text is the stop.
    None when no folder has one; a template that is there but broken is a one-line error."""
    for folder in folders:
        config_path, jinja_path = folder / TOKENIZER_CONFIG_FILE, folder / CHAT_TEMPLATE_FILE
        config = read_config(config_path) if config_path.is_file() else {}
        source, where = config.get("chat_template"), config_path
        if isinstance(source, list):  # several named templates: the default one
            source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
        if not source and jinja_path.is_file():
            source, where = jinja_path.read_text(), jinja_path
        if not source:
            continue
        if not isinstance(source, str):
            raise PipelineError(f"{where}: chat_template must be a string")
        eos = _token_text(config.get("eos_token"))
        compile_checked(source, str(where))
        return Template(name=MODEL, chat_template=source, bos_token=_token_text(config.get("bos_token")),
                        eos_token=eos, stop=eos or None, source=str(where))
    return None


def model_template(folders: Sequence[Path]) -> Template:
    """`find_model_template`, required: naming every place it looked when there is none."""
    template = find_model_template(folders)
    if template is None:
        names = " or ".join(f"{f / TOKENIZER_CONFIG_FILE} ('chat_template') or {f / CHAT_TEMPLATE_FILE}" for f in folders)
        raise PipelineError(f"finetune.template: 'model' needs a chat template in {names}")
    return template


def compile_checked(source: str, where: str) -> None:
    """Compile a chat template now, so a syntax error names its file before any training."""
    import jinja2

    try:
        compile_jinja(source)
    except jinja2.TemplateError as exc:
        raise PipelineError(f"{where}: chat_template: {type(exc).__name__}: {' '.join(str(exc).split())}") from None


def get_template(name: str, model_folders: Sequence[Path] = ()) -> Template:
    """A template by name: a built-in one, or `model` (read from the first model folder that has one)."""
    if name == MODEL:
        return model_template(model_folders)
    if name not in TEMPLATES:
        raise PipelineError(f"finetune.template: unknown template '{name}' (choose from {', '.join([*TEMPLATES, MODEL])})")
    return TEMPLATES[name]


# ---- stop tokens -----------------------------------------------------------------------------------


def stop_tokens(tokenizer, stop: Optional[str]) -> list[int]:
    """The tokens that end a response: the stop string's id when the tokenizer has it as one token;
    else its text's tokens and EOS (generation then stops at EOS); no stop string: EOS."""
    if not stop:
        return [tokenizer.eos_id]
    ids = [int(i) for i in tokenizer.encode(stop)]
    return ids if len(ids) == 1 else ids + [tokenizer.eos_id]


def stop_ids(tokenizer, template: Template) -> list[int]:
    """Token ids at which generation stops: the template's stop token (when it is one) and EOS."""
    ends = stop_tokens(tokenizer, template.stop)
    return list(dict.fromkeys([ends[0], tokenizer.eos_id])) if len(ends) == 1 else [tokenizer.eos_id]


# ---- template.json ------------------------------------------------------------------------------------


def load_template(checkpoint: str | Path) -> Template:
    """The template saved beside a fine-tuned checkpoint; one-line errors when absent or malformed.
    Reads the first format too (`prompt` and `prompt_with_input` with {instruction}, EOS after the response)."""
    path = Path(checkpoint) / TEMPLATE_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: not found (--instruction needs a checkpoint written by `python -m model.finetune`)")
    try:
        data = json.loads(path.read_text())
        if "prompt" in data:
            data = {"name": data["name"], "user": data["prompt"].replace("{instruction}", "{content}"),
                    "user_with_input": data["prompt_with_input"].replace("{instruction}", "{content}")}
        template = Template(**data)
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: not a prompt template ({type(exc).__name__}: {exc})") from None
    for f in dataclasses.fields(Template):
        value, want = getattr(template, f.name), bool if f.name == "system_in_user" else str
        if not (isinstance(value, want) or (value is None and f.name in ("stop", "chat_template"))):
            raise PipelineError(f"{path}: '{f.name}' must be a {want.__name__}, got {type(value).__name__}")
    if template.chat_template:
        compile_checked(template.chat_template, str(path))
    return template
