import json
import random

import pytest
from openai import AsyncOpenAI

from tests.conftest import Api
from tests.openai_server import OpenAIServer
from visionary.offline import GENRES, MEDIUMS, OfflineSuggestions
from visionary.suggestions import INSTRUCTIONS, REQUEST, clean, token_limit


async def test_a_chat_suggestion_is_plain_trimmed_text(api: Api, openai_env: OpenAIServer):
    openai_env.behaviour.suggestion = '  \u201cA koi pond in autumn, ukiyo-e, linocut print\u201d \n'
    answer = await api.suggest()
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert answer.text == "A koi pond in autumn, ukiyo-e, linocut print"
    [call] = openai_env.model_calls()
    assert call.path == "/v1/chat/completions"
    assert call.body["model"] == "gpt-5.4-mini"
    # A compatible server is bounded by the field all of them read (Ollama reads no other).
    assert 0 < call.body["max_tokens"] <= 2000 and "max_completion_tokens" not in call.body
    # Our instructions as the system's message, our request as the user's: nothing else.
    assert call.body["messages"] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": REQUEST},
    ]


async def test_a_suggestion_can_always_be_drawn(api: Api, openai_env: OpenAIServer):
    # A model's text with what a prompt may not hold: the "Use suggestion" button must still work.
    openai_env.behaviour.suggestion = "A \ud800 koi\x00 pond\x1b[31m in \u202eautumn"
    suggestion = await api.suggest()
    assert suggestion.status == 200
    assert suggestion.text == "A  koi pond[31m in \u202eautumn"
    assert (await api.generate({"prompt": suggestion.text})).status == 201


async def test_azure_uses_the_chat_deployment(api: Api, azure_env: OpenAIServer):
    answer = await api.suggest()
    assert answer.status == 200
    assert answer.text == "A lighthouse on a cliff at dusk, impressionism, oil painting"
    [call] = azure_env.model_calls()
    assert call.path == "/openai/deployments/gallery-chat/chat/completions"
    # OpenAI's current field, the only one its reasoning models take.
    assert 0 < call.body["max_completion_tokens"] <= 2000 and "max_tokens" not in call.body


@pytest.mark.parametrize(
    ("base_url", "field"),
    [
        ("https://api.openai.com/v1", "max_completion_tokens"),
        ("https://contoso.openai.azure.com/openai/v1/", "max_completion_tokens"),
        ("https://contoso.cognitiveservices.azure.com/openai/v1/", "max_completion_tokens"),
        ("http://localhost:11434/v1", "max_tokens"),  # Ollama
        ("https://api.mistral.ai/v1", "max_tokens"),
        ("https://openai.azure.com.example.org/v1", "max_tokens"),
    ],
)
def test_the_token_limit_is_asked_for_as_the_service_reads_it(base_url: str, field: str):
    assert token_limit(AsyncOpenAI(api_key="sk-test", base_url=base_url)) == field


async def test_a_service_that_refuses_max_tokens_is_asked_with_the_other_field(api: Api, openai_env: OpenAIServer):
    # A reasoning model (gpt-5) behind a gateway of its own address, which the app takes for any server.
    openai_env.behaviour.refuses = "openai_reasoning_model"
    answer = await api.suggest()
    assert answer.status == 200, answer.body
    refused, answered = openai_env.model_calls()
    assert "max_tokens" in refused.body and "max_completion_tokens" in answered.body
    # Remembered: the next suggestion costs one call.
    openai_env.calls.clear()
    assert (await api.suggest()).status == 200
    [call] = openai_env.model_calls()
    assert "max_completion_tokens" in call.body and "max_tokens" not in call.body


@pytest.mark.parametrize("service", ["azure_before_2024_09", "mistral"])
async def test_a_service_that_refuses_max_completion_tokens_is_asked_with_max_tokens(
    api: Api, azure_env: OpenAIServer, service: str
):
    azure_env.behaviour.refuses = service  # Mistral's 422 names the field in a pydantic error list
    answer = await api.suggest()
    assert answer.status == 200, answer.body
    refused, answered = azure_env.model_calls()
    assert "max_completion_tokens" in refused.body and "max_tokens" in answered.body


async def test_the_suggestion_model_is_a_setting(api: Api, openai_env: OpenAIServer, monkeypatch):
    monkeypatch.setenv("VISIONARY_SUGGESTION_MODEL", "my-local-llm")
    await api.suggest()
    assert openai_env.model_calls()[0].body["model"] == "my-local-llm"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [("server_error", 502, "upstream_error"), ("bad_key", 502, "upstream_error")],
)
async def test_chat_failures_are_json_errors(api: Api, openai_env: OpenAIServer, error, status, code):
    openai_env.behaviour.error = error
    answer = await api.suggest()
    assert answer.status == status
    assert answer.json()["code"] == code


@pytest.mark.parametrize("text", ['  ""  ', '"""', "\u200b\u200d\ufe0f", "\u201c \u201d", "..."])
async def test_an_answer_with_no_words_is_an_upstream_error(api: Api, openai_env: OpenAIServer, text: str):
    openai_env.behaviour.suggestion = text
    answer = await api.suggest()
    assert answer.status == 502 and answer.json()["code"] == "upstream_error", answer.body


@pytest.mark.parametrize("finish_reason", ["length", "content_filter"])
async def test_an_answer_cut_short_is_no_suggestion(api: Api, openai_env: OpenAIServer, finish_reason: str):
    # A reasoning model out of tokens, or Azure's output filter, may leave a fragment: "A fox in".
    openai_env.behaviour.suggestion, openai_env.behaviour.finish_reason = "A fox in", finish_reason
    answer = await api.suggest()
    assert answer.status == 502 and answer.json()["code"] == "upstream_error", answer.body


@pytest.mark.parametrize(
    "thinking",
    [
        # Qwen3 on vLLM with no reasoning parser: the thinking, tags and all, before the answer.
        "<think>\nOkay, the user wants a random prompt: a genre and a medium. Maybe a lighthouse.\n</think>\n\n",
        # DeepSeek-R1 on vLLM: its chat template opens <think>, so the answer holds only its end.
        "Okay, the user wants a random prompt. Let me think: a lighthouse, oil painting.\n</think>\n\n",
    ],
)
async def test_a_reasoning_models_thinking_is_not_the_suggestion(api: Api, openai_env: OpenAIServer, thinking: str):
    openai_env.behaviour.suggestion = thinking + '"A lighthouse on a cliff at dusk, impressionism, oil painting"'
    answer = await api.suggest()
    assert answer.status == 200, answer.body
    assert answer.text == "A lighthouse on a cliff at dusk, impressionism, oil painting"


async def test_a_suggestion_in_parts_is_its_text_without_the_thinking(api: Api, openai_env: OpenAIServer):
    # Mistral's Magistral: the content a list of parts, the thinking in a part of its own.
    openai_env.behaviour.content_parts = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "The user wants a prompt. A lighthouse?"}]},
        {"type": "text", "text": "A lighthouse on a cliff at dusk, "},
        {"type": "text", "text": "impressionism, oil painting"},
    ]
    answer = await api.suggest()
    assert answer.status == 200, answer.body
    assert answer.text == "A lighthouse on a cliff at dusk, impressionism, oil painting"


async def test_a_suggestion_in_parts_that_is_all_thinking_is_no_suggestion(api: Api, openai_env: OpenAIServer):
    openai_env.behaviour.content_parts = [{"type": "thinking", "thinking": [{"type": "text", "text": "A fox?"}]}]
    answer = await api.suggest()
    assert answer.status == 502 and answer.json()["code"] == "upstream_error", answer.body


async def test_a_reasoning_model_that_never_stopped_thinking_gave_no_suggestion(api: Api, openai_env: OpenAIServer):
    openai_env.behaviour.suggestion = "<think>\nOkay, the user wants a random prompt. A lighthouse? A fox"
    answer = await api.suggest()
    assert answer.status == 502 and answer.json()["code"] == "upstream_error", answer.body


async def test_offline_suggestions_vary_and_name_genre_and_medium(api: Api, offline_env):
    answers = [(await api.suggest()).text for _ in range(12)]
    assert len(set(answers)) > 1
    for text in answers:
        _, genre, medium = text.split(", ", 2)
        assert genre in GENRES and medium in MEDIUMS


async def test_a_suggestion_fits_the_prompt_limit_so_it_can_be_drawn_as_it_is(
    api: Api, openai_env: OpenAIServer, monkeypatch
):
    monkeypatch.setenv("VISIONARY_MAX_PROMPT_CHARS", "40")
    openai_env.behaviour.suggestion = "A whale gliding through a starry sky above a sleeping harbour town, watercolor"
    suggestion = (await api.suggest()).text
    assert suggestion == "A whale gliding through a starry sky"
    assert (await api.generate({"prompt": suggestion})).status == 201


async def test_offline_suggestions_come_from_their_random_source():
    async def three_from(seed: int) -> list[str]:
        suggestions = OfflineSuggestions(random.Random(seed))
        return [await suggestions.suggest() for _ in range(3)]

    assert await three_from(7) == await three_from(7)
    assert await three_from(7) != await three_from(8)


def test_clean_strips_wrapping_quotes_only():
    assert clean(' "A \'quoted\' word" ') == "A 'quoted' word"
    assert clean("\u00abBonjour\u00bb") == "Bonjour"
    assert clean('He said "hi"') == 'He said "hi"'
    assert clean('"') == '"'
    # Two quoted phrases: their outer quotes are no pair.
    assert clean('"Starry Night" as a cyberpunk city, "4K"') == '"Starry Night" as a cyberpunk city, "4K"'
    assert clean("'The fox's den at dawn, watercolor'") == "The fox's den at dawn, watercolor"


def test_clean_takes_the_prompt_out_of_what_models_wrap_it_in():
    fox = "A fox in the snow, watercolor"
    # Markdown emphasis, with quotes inside or out.
    assert clean(f'**"{fox}"**') == fox
    assert clean(f'"*{fox}*"') == fox
    assert clean(f"_{fox}_") == fox
    # Quotes as other languages write them.
    for opening, closing in ["\u201e\u201c", "\u00bb\u00ab", "\u300c\u300d", "\u201a\u2018"]:
        assert clean(opening + fox + closing) == fox
    # Drawn as nothing around the quotes: a byte order mark, zero-width spaces.
    assert clean(f"\ufeff\u200b\u201c{fox}\u201d\u200b") == fox
    # A label, or a preamble.
    assert clean(f"Prompt: {fox}") == fox
    assert clean(f"**Image prompt:** {fox}") == fox
    assert clean(f"Here's a random image prompt for you: {fox}") == fox
    assert clean(f"Sure! Here is one:\n\n\"{fox}\"") == fox
    # What is part of a prompt stays.
    assert clean("A *bold* fox, snake_case sign") == "A *bold* fox, snake_case sign"
    assert clean("*A bold* fox, *stars*") == "*A bold* fox, *stars*"
    assert clean("Title card: Starry Night, oil painting") == "Title card: Starry Night, oil painting"
    assert clean("Here is a lighthouse: dusk, oil painting") == "Here is a lighthouse: dusk, oil painting"
    # A first line ending in a colon is a preamble only when a blank line sets it apart.
    assert clean("A neon sign that reads:\nOpen all night, photo-realistic") == (
        "A neon sign that reads:\nOpen all night, photo-realistic"
    )
    assert clean("A heart \u2764\ufe0f") == "A heart \u2764\ufe0f"


async def test_a_suggestion_in_markdown_is_sent_as_the_prompt_alone(api: Api, openai_env: OpenAIServer):
    openai_env.behaviour.suggestion = '**Prompt:** \u201eA koi pond in autumn, ukiyo-e, linocut print\u201c\n'
    answer = await api.suggest()
    assert answer.text == "A koi pond in autumn, ukiyo-e, linocut print"


async def test_a_refused_suggestion_asks_no_one_to_rephrase(api: Api, openai_env: OpenAIServer):
    openai_env.behaviour.error = "content_policy"
    answer = await api.suggest()
    assert answer.status == 502 and answer.json()["code"] == "upstream_error"
    assert "rephrase" not in answer.json()["error"]


async def test_a_chat_answer_too_large_for_a_suggestion_is_refused(api: Api, openai_env: OpenAIServer):
    # A few kilobytes at most from a chat model; megabytes are a broken or hostile server.
    words = "a lighthouse on a cliff " * 50_000
    openai_env.behaviour.raw_answer = (
        json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": words},
                                 "finish_reason": "stop"}]}),
        "application/json",
    )
    answer = await api.suggest()
    assert answer.status == 502
    assert answer.json()["error"] == "The chat model's answer is too large to be a suggestion."
