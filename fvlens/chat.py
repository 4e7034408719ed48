"""Chat templates: instruction prompts written the way an instruction-tuned model expects them.

``chat_template(model)`` renders the tokenizer's own chat template
(``tokenizer.apply_chat_template``) around a placeholder user message with the generation
prompt, and splits it there: what comes before the user's content becomes
``Template.chat_prefix`` (system turn, ``<|im_start|>user\\n`` …) and what comes after it
``Template.chat_suffix`` (end of the user turn and the start of the assistant's). The prompt
builders then write ``chat_prefix + user content + chat_suffix``; the text pieces keep their
roles, so frame positions stay exact under the template.

``answer_formats(template)`` lists the candidate ways the answer can start (with or without a
leading space, after a forced reply prefix such as ``"The answer is:"``); ``fvlens.plan``
chooses one per task on validation and records it.
"""

from __future__ import annotations

import dataclasses

from fvlens.modeltype import Model

from fvlens.batch import DEFAULT_TEMPLATE, Template

__all__ = ["CHAT_TEMPLATES", "chat_template", "template_for", "answer_formats",
           "FORCED_PREFIXES"]

CHAT_TEMPLATES = ("none", "auto")

# The user content used to locate where the template puts a message (letters only, so no
# template filter such as ``trim`` changes it).
_PLACEHOLDER = "FvlensUserContentPlaceholder"
_CHECK = "Give the opposite of the word.\nQ: hot\nA:"

# Reply openings tried after the assistant header (the answer then follows after a space):
# the query's own "A:" (instruction-tuned models often echo it) and a plain statement
# (they often open with "The opposite of … is …" instead of the answer).
FORCED_PREFIXES = ("A:", "The answer is:")


def chat_template(model: Model, base: Template = DEFAULT_TEMPLATE) -> Template:
    """``base`` wrapped in the tokenizer's chat template, the answer starting the reply.

    The user turn holds the prompt's own text (instruction, ``instruction_suffix``, query);
    the template's default system turn, if it has one, is kept. The answer is expected with
    no leading space (``answer_prefix=""``): it is the first thing the assistant writes.

    Raises:
        ValueError: the model has no tokenizer, the tokenizer carries no chat template, or
            the template does not reproduce a user message verbatim.
    """
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer, so it has no chat template; use "
                         "--chat-template none")
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"the tokenizer of {model.cfg.model_name!r} carries no chat template "
                         "(tokenizer.chat_template is empty): use --chat-template none, or "
                         "set tokenizer.chat_template yourself")

    def render(content: str) -> str:
        return tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                       add_generation_prompt=True)

    text = render(_PLACEHOLDER)
    if text.count(_PLACEHOLDER) != 1:
        raise ValueError("the chat template does not write the user message exactly once; "
                         "use --chat-template none")
    prefix, suffix = text.split(_PLACEHOLDER)
    if render(_CHECK) != prefix + _CHECK + suffix:
        raise ValueError("the chat template changes the user message it wraps (it does more "
                         "than put text around it); use --chat-template none")
    return dataclasses.replace(base, chat_prefix=prefix, chat_suffix=suffix, answer_prefix="",
                               name="chat")


def template_for(model: Model, chat: str, base: Template = DEFAULT_TEMPLATE
                 ) -> Template:
    """The template of a ``--chat-template`` setting: ``base`` for "none", the tokenizer's
    chat template around it for "auto"."""
    if chat not in CHAT_TEMPLATES:
        raise ValueError(f"chat template must be one of {CHAT_TEMPLATES}, got {chat!r}")
    return base if chat == "none" else chat_template(model, base)


def answer_formats(template: Template) -> dict[str, Template]:
    """The candidate answer formats of a template, by name (chosen on validation).

    Without a chat template: the template as it is (``" y"`` after ``A:``). In a chat turn:
    the answer opening the reply with no space (``"bare"``), and after each forced reply
    prefix of ``FORCED_PREFIXES`` (``"forced:…"``, the answer after a space).
    """
    if not template.chat:
        return {template.name: template}
    out = {"bare": dataclasses.replace(template, answer_prefix="", forced_prefix="",
                                       name="bare")}
    for prefix in FORCED_PREFIXES:
        name = f"forced:{prefix}"
        out[name] = dataclasses.replace(template, answer_prefix=" ", forced_prefix=prefix,
                                        name=name)
    return out
