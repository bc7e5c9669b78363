"""Prompt suggestions: a chat model asked for one random image prompt.

`ChatSuggestions` uses the Chat Completions API (OpenAI, Azure OpenAI or a
compatible server); `visionary.offline.OfflineSuggestions` composes prompts from
word lists.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Protocol

import openai

from visionary.errors import ApiError
from visionary.models import MALFORMED_ANSWER, call_model, credentials_hint, json_answer
from visionary.text import without_forbidden

# Reasoning models spend part of this budget thinking; the prompt itself is short.
MAX_COMPLETION_TOKENS = 1000
# A chat answer of that many tokens is a few kilobytes; a larger one is no answer of a chat model.
MAX_ANSWER_BYTES = 1024 * 1024
# The budget's field, as each service reads it. OpenAI and Azure OpenAI refuse `max_tokens` for
# their reasoning models; Ollama, LM Studio, Mistral and older llama.cpp read only `max_tokens`
# (Mistral refuses the other with a 422, Ollama ignores it and a reasoning model thinks unbounded).
TokenLimit = Literal["max_completion_tokens", "max_tokens"]
_OTHER_LIMIT: dict[TokenLimit, TokenLimit] = {
    "max_completion_tokens": "max_tokens",
    "max_tokens": "max_completion_tokens",
}
# Hosts of OpenAI's own models: OpenAI, and Azure OpenAI reached through the plain OpenAI client
# (its v1 API, https://NAME.openai.azure.com/openai/v1/).
_OPENAI_HOSTS = re.compile(r"api\.openai\.com|.+\.(openai|cognitiveservices|services\.ai)\.azure\.com")
# How a service words a field it does not take: OpenAI's "Unsupported parameter", a pydantic
# server's (Mistral's, vLLM's) "Extra inputs are not permitted", others' "unknown"/"unrecognized".
_NOT_TAKEN = re.compile(
    r"unsupported|not supported|not permitted|not allowed|extra|unknown|unrecogni[sz]ed",
    re.IGNORECASE,
)
INSTRUCTIONS = (
    "You write prompts for an AI image generator. Answer with exactly one prompt of at most "
    "40 words and nothing else: no quotes, no preamble."
)
REQUEST = (
    "Write a random, imaginative prompt for an image generator. Name the genre and the kind of "
    "picture, for example oil painting, watercolor, photo-realistic, 4K, abstract, modern, "
    "black and white."
)
CUT_SHORT = ("length", "content_filter")  # finish reasons of an answer that stopped mid-way
# Reasoning models served with no reasoning parser (vLLM, llama.cpp, older Ollama: deepseek-r1,
# qwen3) think in the content, before the answer: `<think>...</think>`, or only its end when
# the chat template opened it (DeepSeek-R1's does).
_THINKING_OPENS, _THINKING_ENDS = "<think>", "</think>"
# Quotes as languages pair them, opening then closing: English, German („“ and »«), Polish („”),
# Swedish (””), French (« » and ‹ ›), Japanese (「」『』), and the full-width one.
_QUOTE_PAIRS = frozenset({
    '""', "''", "``", "\u201c\u201d", "\u2018\u2019", "\u201e\u201c", "\u201e\u201d", "\u201d\u201d", "\u201a\u2018",
    "\u00ab\u00bb", "\u00bb\u00ab", "\u2039\u203a", "\u300c\u300d", "\u300e\u300f", "\uff02\uff02",
})
_EMPHASIS = ("**", "__", "*", "_")  # markdown's bold and italic
# Whitespace, and what is drawn as nothing beside it: zero-width spaces and joiners, direction
# marks, the word joiner, and a byte order mark.
_BLANK = "".join(ch for ch in map(chr, range(0x3001)) if ch.isspace()) + "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"
# What models put before the prompt despite the instructions: a label ("Prompt:", "**Image prompt:**"),
# "Here's a prompt for you:", or a short first line ending in a colon and set apart ("Sure! Here's one:").
_PREAMBLE = re.compile(
    r"[*_]{0,2}(?:image\s+)?prompt[*_]{0,2}\s*:[*_]{0,2}"
    r"|here(?:'s|\u2019s|\s+is)\b[^:\n]{0,60}\bprompt\b[^:\n]{0,30}:"
    r"|[^\n]{1,80}:[ \t]*\n[ \t]*\n",
    re.IGNORECASE,
)


class SuggestionProvider(Protocol):
    async def suggest(self) -> str: ...


def clean(text: str) -> str:
    """A model's answer as the prompt it holds, which generateImage takes: without the
    preamble, markdown emphasis and quotes that models like to wrap a prompt in."""
    text = without_forbidden(text)
    while True:
        before = text
        text = text.strip(_BLANK)
        if preamble := _PREAMBLE.match(text):
            text = text[preamble.end():]
        text = _unwrapped(text)
        if text == before:
            return text


def _unwrapped(text: str) -> str:
    """`text` less one pair of emphasis marks or quotes that wraps all of it, if one does."""
    for marks in _EMPHASIS:
        inner = text[len(marks):-len(marks)]
        if text.startswith(marks) and text.endswith(marks) and inner and marks not in inner:
            return inner
    return text[1:-1] if _wrapped_whole(text) else text


def _wrapped_whole(text: str) -> bool:
    """Whether one pair of quotes wraps the whole text: not `"Starry Night" ... "4K"`, two
    quoted phrases, whose outer quotes are not a pair. An apostrophe inside a word is no quote."""
    if len(text) < 2 or text[0] + text[-1] not in _QUOTE_PAIRS:
        return False
    marks = (text[0], text[-1])
    return not any(
        ch in marks and not (text[i - 1].isalpha() and text[i + 1].isalpha()) for i, ch in enumerate(text[1:-1], 1)
    )


def token_limit(client: openai.AsyncOpenAI) -> TokenLimit:
    """The field a service is first asked to bound its answer with: OpenAI's current one for
    OpenAI and Azure OpenAI, the long-standing `max_tokens` that every compatible server reads."""
    if isinstance(client, openai.AsyncAzureOpenAI) or _OPENAI_HOSTS.fullmatch(client.base_url.host):
        return "max_completion_tokens"
    return "max_tokens"


class ChatSuggestions:
    def __init__(self, client: openai.AsyncOpenAI, model: str, deadline: float) -> None:
        self._client = client
        self._model = model
        self._deadline = deadline  # for the model call, all its retries included
        # Switched, for the life of the process, when the service refuses it.
        self._token_limit = token_limit(client)

    async def suggest(self) -> str:
        completion = await call_model(
            self._ask,
            self._deadline,
            "suggestion model",
            credentials_hint(self._client),
            # Our own request was refused, not the user's words: nothing for them to rephrase.
            refused=lambda: ApiError.upstream_error("The chat model declined to suggest a prompt; try again."),
        )
        if not (text := _first_text(completion)):
            raise ApiError.upstream_error("The chat model gave no suggestion; try again.")
        return text

    async def _ask(self) -> Any:
        limit = self._token_limit
        try:
            return await self._ask_bounded_by(limit)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as error:
            if not _refuses_field(error, limit):
                raise
        # A gateway or a model that takes the other field: ask once more, and from now on, that way.
        self._token_limit = _OTHER_LIMIT[limit]
        return await self._ask_bounded_by(self._token_limit)

    async def _ask_bounded_by(self, limit: TokenLimit) -> Any:
        # The SDK asks (its retries, sign-in and errors); the answer is read, capped, and parsed here.
        request = self._client.chat.completions.with_streaming_response.create(
            model=self._model,
            messages=[
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": REQUEST},
            ],
            extra_body={limit: MAX_COMPLETION_TOKENS},
        )
        return await json_answer(request, MAX_ANSWER_BYTES, _too_large)


def _refuses_field(error: openai.APIStatusError, field: str) -> bool:
    """Whether an error answer refuses the request for holding `field`, not for its value."""
    said = f"{error.message} {error.body}"
    return field in said and (error.code == "unsupported_parameter" or _NOT_TAKEN.search(said) is not None)


def _too_large() -> ApiError:
    return ApiError.upstream_error("The chat model's answer is too large to be a suggestion.")


def _first_text(completion: Any) -> str:
    """The first choice's text, cleaned; empty when there is none (the answer may be any JSON),
    when it was cut short (out of tokens, which a reasoning model may spend on thinking, or by
    a content filter: a fragment is no prompt), or when it holds no letter or digit at all."""
    try:
        choice = completion["choices"][0]
        content, finish_reason = _text_of(choice["message"]["content"]), choice.get("finish_reason")
    except MALFORMED_ANSWER:
        return ""
    if content is None or finish_reason in CUT_SHORT:
        return ""
    text = clean(_after_thinking(content))
    return text if any(ch.isalnum() for ch in text) else ""


def _text_of(content: object) -> str | None:
    """A message's text: the content itself, or its text parts when it is a list of parts, as
    Mistral's reasoning models (Magistral) send it, their thinking in a part of its own."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (part["text"] for part in content if part.get("type") == "text")
        return "".join(text for text in texts if isinstance(text, str))
    return None


def _after_thinking(content: str) -> str:
    """The answer after the model's thinking, if it thought in the content; none if it never
    stopped thinking."""
    if _THINKING_ENDS in content:
        return content.rpartition(_THINKING_ENDS)[2]
    return "" if content.lstrip(_BLANK).startswith(_THINKING_OPENS) else content
