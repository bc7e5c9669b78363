import subprocess
import sys

import pytest

from tests.conftest import ROOT_ENV, registered_functions
from tests.served import MODEL_CODE


def test_four_http_triggers_with_their_routes_and_methods():
    triggers = {
        name: (function.get_trigger().route, [m.value for m in function.get_trigger().methods])
        for name, function in registered_functions().items()
    }
    assert triggers == {
        "generateImage": ("generateImage", ["POST"]),
        "getImages": ("getImages", ["GET"]),
        "getChatGPTSuggestion": ("getChatGPTSuggestion", ["GET"]),
        "sasToken": ("sasToken", ["GET"]),
    }


@pytest.mark.parametrize(
    ("setting", "level"),
    [(None, "ANONYMOUS"), ("anonymous", "ANONYMOUS"), ("Anonymous", "ANONYMOUS"), ("function", "FUNCTION"), (" Function ", "FUNCTION"),
     ("anonymus", "FUNCTION"), ("admin", "FUNCTION")],
)
def test_the_auth_level_the_host_sees(setting: str | None, level: str):
    # What the Functions host reads from the indexed app: every trigger, in a fresh process.
    env = {**ROOT_ENV, **({"VISIONARY_AUTH_LEVEL": setting} if setting is not None else {})}
    script = "import function_app\nfor f in function_app.app.get_functions(): print(f.get_trigger().auth_level.name)"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [level] * 4


def test_importing_the_app_never_fails_on_settings():
    # Malformed settings must not stop the host from listing the functions.
    env = {**ROOT_ENV, "VISIONARY_PAGE_SIZE": "many", "VISIONARY_SAS_TTL_MINUTES": "-3", "accountName": "x"}
    result = subprocess.run(
        [sys.executable, "-c", "import function_app; print(len(function_app.app.get_functions()))"],
        env=env, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"


async def test_malformed_settings_are_reported_at_first_use(api, storage_env, monkeypatch):
    monkeypatch.setenv("VISIONARY_PAGE_SIZE", "many")
    answer = await api.get_images()
    assert answer.status == 503
    assert answer.json() == {
        "error": "VISIONARY_PAGE_SIZE must be a whole number from 1 to 500, not 'many'.",
        "code": "not_configured",
    }


def test_the_app_starts_without_its_model_code():
    # Cold start: these load at the first generation or suggestion, never at import.
    result = subprocess.run(
        [sys.executable, "-c", f"import sys, function_app; print([m for m in {MODEL_CODE!r} if m in sys.modules])"],
        env=ROOT_ENV, capture_output=True, text=True, check=True,
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("setting", "value", "broken"),
    [
        ("VISIONARY_PROVIDER", "opneai", {"getChatGPTSuggestion", "generateImage"}),
        ("VISIONARY_MODEL_TIMEOUT_SECONDS", "soon", {"getChatGPTSuggestion", "generateImage"}),
        ("VISIONARY_CONTAINER", "Bad_Name", {"getImages", "sasToken", "generateImage"}),
        ("VISIONARY_SAS_TTL_MINUTES", "-3", {"getImages", "sasToken", "generateImage"}),
        ("VISIONARY_PAGE_SIZE", "0", {"getImages"}),
        ("VISIONARY_MAX_IMAGES_PER_DAY", "some", {"generateImage"}),
        ("VISIONARY_MAX_PROMPT_CHARS", "0", {"generateImage"}),
        ("VISIONARY_IMAGE_SIZES", "1024*1024", {"generateImage"}),  # suggestions have no size
    ],
)
async def test_a_malformed_setting_stops_only_the_endpoints_that_need_it(
    api, offline_env, monkeypatch, setting: str, value: str, broken: set[str]
):
    monkeypatch.setenv(setting, value)
    answers = {
        "getImages": await api.get_images(),
        "sasToken": await api.call("sasToken"),
        "getChatGPTSuggestion": await api.suggest(),
        "generateImage": await api.generate({"prompt": "A lighthouse at dusk"}),
    }
    for endpoint, answer in answers.items():
        if endpoint in broken:
            assert (answer.status, answer.json()["code"]) == (503, "not_configured"), endpoint
            assert setting in answer.json()["error"], endpoint
        else:
            assert answer.status in (200, 201), (endpoint, answer.body)
