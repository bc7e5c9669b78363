import pytest

from visionary.errors import ApiError
import json
import re
from pathlib import Path

from visionary.settings import SETTING_NAMES, Settings, unknown_settings, whole_number

AZURITE = "UseDevelopmentStorage=true"


def storage(env: dict[str, str]):
    return Settings.from_env(env).storage


def test_storage_sources_in_their_order():
    everything = {
        "VISIONARY_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k",
        "accountName": "nodeacct",
        "accountKey": "a2V5",
        "VISIONARY_STORAGE_ACCOUNT_URL": "https://mi.blob.core.windows.net/",
        "AzureWebJobsStorage": AZURITE,
    }
    assert storage(everything).connection_string.startswith("DefaultEndpointsProtocol=https")
    del everything["VISIONARY_STORAGE_CONNECTION_STRING"]
    assert storage(everything).account_name == "nodeacct"
    del everything["accountKey"]  # a name alone is not enough, and is named
    assert storage(everything).account_url == "https://mi.blob.core.windows.net"
    assert problems(everything) == ["accountName and accountKey go together: set both, or neither."]
    del everything["accountName"]
    del everything["VISIONARY_STORAGE_ACCOUNT_URL"]
    assert storage(everything).connection_string == AZURITE
    assert storage({}) is None
    # The Functions host's identity-based connection: keyless storage on the same account.
    assert storage({"AzureWebJobsStorage__accountName": "hostacct"}).account_url == "https://hostacct.blob.core.windows.net"
    uri = {"AzureWebJobsStorage__blobServiceUri": "https://hostacct.blob.core.windows.net/"}
    assert storage(uri).account_url == "https://hostacct.blob.core.windows.net"


def test_defaults_and_limits():
    settings = Settings.from_env({"AzureWebJobsStorage": AZURITE})
    assert (settings.page_size, settings.max_prompt_chars) == (50, 4000)
    assert (settings.storage.container, settings.storage.sas_ttl_minutes) == ("images", 30)
    assert Settings.from_env({"AzureWebJobsStorage": AZURITE, "VISIONARY_SAS_TTL_MINUTES": "100000"}).storage.sas_ttl_minutes == 1440
    assert settings.storage.timeout_seconds == 10  # a storage call that hangs is a 503 in seconds


def test_the_model_defaults_answer_before_azure_ends_the_request():
    models = Settings.from_env({"OPENAI_API_KEY": "sk"}).models
    assert (models.timeout_seconds, models.max_retries) == (180, 2)  # a real image model takes a minute or more
    assert models.deadline_seconds < 230  # Azure's front end ends an HTTP request at 230 s


def test_the_request_deadline_is_a_setting_under_azures_limit():
    assert Settings.from_env({}).request_deadline_seconds < 230
    assert Settings.from_env({"VISIONARY_REQUEST_DEADLINE_SECONDS": "600"}).request_deadline_seconds == 600
    wrong = Settings.from_env({"VISIONARY_REQUEST_DEADLINE_SECONDS": "0"})
    assert any("VISIONARY_REQUEST_DEADLINE_SECONDS" in problem.text for problem in wrong.problems)
    # Up to three storage timeouts are kept for the steps after the model: generateImage
    # names a deadline without room for them; the other endpoints, which keep none, work on.
    slow_storage = Settings.from_env({"AzureWebJobsStorage": AZURITE, "VISIONARY_STORAGE_TIMEOUT_SECONDS": "100"})
    assert not slow_storage.problems and slow_storage.require_storage().timeout_seconds == 100
    with pytest.raises(ApiError) as refused:
        slow_storage.require_request_deadline()
    assert refused.value.code == "not_configured" and "3 times" in refused.value.message
    roomy = {"AzureWebJobsStorage": AZURITE, "VISIONARY_STORAGE_TIMEOUT_SECONDS": "100",
             "VISIONARY_REQUEST_DEADLINE_SECONDS": "600"}
    assert Settings.from_env(roomy).require_request_deadline() == 600


def problems(env: dict[str, str]) -> list[str]:
    return [problem.text for problem in Settings.from_env(env).problems]


@pytest.mark.parametrize("value", ["٣", "1_000", "1e3", "-5", "0x10", "ten", "nan"])
def test_numbers_are_plain_ascii_decimals(value: str):
    [problem] = problems({"VISIONARY_PAGE_SIZE": value})
    assert problem == f"VISIONARY_PAGE_SIZE must be a whole number from 1 to 500, not {value!r}."
    assert Settings.from_env({"VISIONARY_PAGE_SIZE": value}).page_size == 50  # the request still gets an answer


def test_a_number_too_long_for_int_is_named_not_a_500():
    [problem] = problems({"VISIONARY_PAGE_SIZE": "5" * 5000})
    assert problem.startswith("VISIONARY_PAGE_SIZE must be a whole number") and len(problem) < 200


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"accountKey": "a2V5", "AzureWebJobsStorage": AZURITE}, "accountName and accountKey go together"),
        ({"accountName": "my gallery", "accountKey": "a2V5"}, "accountName must be a storage account's name"),
        ({"AzureWebJobsStorage__accountName": "Host_Acct"}, "AzureWebJobsStorage__accountName must be"),
        ({"VISIONARY_STORAGE_ACCOUNT_URL": "https://"}, "VISIONARY_STORAGE_ACCOUNT_URL must be an https:// URL"),
        ({"AzureWebJobsStorage__blobServiceUri": "https://[::1"}, "AzureWebJobsStorage__blobServiceUri must be"),
        ({"accountName": "ab", "accountKey": "a2V5"}, "accountName must be a storage account's name"),  # 3 to 24
        ({"accountName": "a" * 25, "accountKey": "a2V5"}, "accountName must be a storage account's name"),
        # A SAS pasted with the account's URL would ride along in every link the app hands out.
        ({"VISIONARY_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net/?sv=2025-11-05&sig=SECRET"},
         "VISIONARY_STORAGE_ACCOUNT_URL must be the account's URL alone"),
        ({"AzureWebJobsStorage": AZURITE, "VISIONARY_CONTAINER": "my--images"}, "VISIONARY_CONTAINER must be 3 to 63"),
        # A container's URL, as the portal shows it: storage drops the path, and the app would use
        # VISIONARY_CONTAINER's `images` while the pictures sit in `photos`.
        ({"VISIONARY_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net/photos"},
         "VISIONARY_STORAGE_ACCOUNT_URL must be the account's URL alone"),
        ({"AzureWebJobsStorage__blobServiceUri": "https://acct.blob.core.windows.net/photos/"},
         "AzureWebJobsStorage__blobServiceUri must be the account's URL alone"),
        ({"VISIONARY_STORAGE_ACCOUNT_URL": "https://acct.blob.core.chinacloudapi.cn/photos"},
         "VISIONARY_STORAGE_ACCOUNT_URL must be the account's URL alone"),
    ],
)
def test_storage_settings_that_cannot_reach_the_intended_account_are_named(env: dict[str, str], named: str):
    # Half of the Node version's pair fell through to the host's own account; the rest were 500s.
    [problem] = problems(env)
    assert problem.startswith(named)
    with pytest.raises(ApiError) as refused:
        Settings.from_env(env).require_storage()
    assert refused.value.code == "not_configured"


def test_an_azurite_url_keeps_its_path_which_names_the_account():
    # Path-style, as Azurite (over HTTPS, for a token) is reached from another container of a
    # compose file: the storage SDK keeps the path of any host but an account's own endpoint.
    url = {"VISIONARY_STORAGE_ACCOUNT_URL": "https://azurite:10000/devstoreaccount1"}
    assert problems(url) == []
    assert storage(url).account_url == "https://azurite:10000/devstoreaccount1"


def test_an_account_url_in_capitals_is_read_as_the_account_it_names():
    # Storage reads the account's name off the host as written: "MyAcct" is no account's.
    url = {"VISIONARY_STORAGE_ACCOUNT_URL": "HTTPS://MyAcct.Blob.Core.Windows.Net/"}
    assert storage(url).account_url == "https://myacct.blob.core.windows.net"


def test_the_provider_is_named_in_any_case():
    assert Settings.from_env({"VISIONARY_PROVIDER": "Azure", "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com"}).models.provider == "azure"
    assert problems({"VISIONARY_PROVIDER": " OpenAI ", "OPENAI_API_KEY": "sk"}) == []


def test_decimal_settings_take_fractions():
    assert Settings.from_env({"VISIONARY_MODEL_TIMEOUT_SECONDS": "0.5"}).models.timeout_seconds == 0.5
    assert Settings.from_env({"VISIONARY_MODEL_TIMEOUT_SECONDS": ".5"}).models.timeout_seconds == 0.5
    assert problems({"VISIONARY_MODEL_TIMEOUT_SECONDS": "1e2"}) != []


def test_the_public_base_url_must_be_a_link_base():
    cdn = {"AzureWebJobsStorage": AZURITE, "VISIONARY_PUBLIC_BASE_URL": "https://cdn.example.com/images/"}
    assert Settings.from_env(cdn).storage.public_base_url == "https://cdn.example.com/images"
    for wrong in ("cdn.example.com/", "ftp://cdn.example.com", "https://", "https://[::1", "https://cdn.example.com/?sv=1&sig=SECRET",
                  "https://cdn.example.com/images?", "https://cdn.example.com/images#", "https://cdn.example.com/images/?"):
        # An empty query or fragment too: every link would have put the blob's name after it.
        [problem] = problems({"AzureWebJobsStorage": AZURITE, "VISIONARY_PUBLIC_BASE_URL": wrong})
        assert problem.startswith("VISIONARY_PUBLIC_BASE_URL must be an http:// or https:// URL") and "SECRET" not in problem


def test_image_sizes_are_sizes_the_model_knows_how_to_read():
    assert Settings.from_env({"VISIONARY_IMAGE_SIZES": "auto, 1024x1024"}).models.image_sizes == ("auto", "1024x1024")
    [problem] = problems({"VISIONARY_IMAGE_SIZES": "foo,1024x1024,1024X1024"})
    assert problem == "VISIONARY_IMAGE_SIZES must list sizes like 1024x1024 (or auto), not foo, 1024X1024."
    [problem] = problems({"VISIONARY_IMAGE_SIZES": "0x1024, 01024x1024, 1024x1024x"})  # no model draws these
    assert problem.endswith("not 0x1024, 01024x1024, 1024x1024x.")


def test_unmet_names_everything_that_stops_an_endpoint():
    assert Settings.from_env({"AzureWebJobsStorage": AZURITE, "OPENAI_API_KEY": "sk"}).unmet() == []
    nothing = Settings.from_env({}).unmet()
    assert [text.split(":")[0] for text in nothing] == ["Storage is not configured", "No model service is configured"]
    keyless = Settings.from_env({"AzureWebJobsStorage": AZURITE, "VISIONARY_PROVIDER": "openai"}).unmet()
    assert keyless == ["VISIONARY_PROVIDER is openai: set OPENAI_API_KEY, or OPENAI_BASE_URL for a compatible server."]
    tight = {"AzureWebJobsStorage": AZURITE, "VISIONARY_PROVIDER": "offline", "VISIONARY_REQUEST_DEADLINE_SECONDS": "30"}
    assert [text.split(" must")[0] for text in Settings.from_env(tight).unmet()] == ["VISIONARY_REQUEST_DEADLINE_SECONDS"]
    # Another generation setting wrong as well: both are named, not the first alone.
    both = Settings.from_env(tight | {"VISIONARY_MAX_IMAGES_PER_DAY": "ten"}).unmet()
    assert [text.split(" must")[0] for text in both] == ["VISIONARY_MAX_IMAGES_PER_DAY", "VISIONARY_REQUEST_DEADLINE_SECONDS"]
    malformed = Settings.from_env({"AzureWebJobsStorage": AZURITE, "VISIONARY_PROVIDER": "opneai"}).unmet()
    assert malformed == ["VISIONARY_PROVIDER must be one of openai, azure, offline, not 'opneai'."]  # said once


def test_a_mistyped_setting_name_is_named_with_the_one_it_likely_meant():
    assert unknown_settings({"VISIONARY_PAGE_SIZE": "9", "OPENAI_API_KEY": "sk"}) == []
    assert unknown_settings({"VISIONARY_MAX_IMAGE_PER_DAY": "50", "visionary_page_size": "9", "VISIONARY_COLOR": "x"}) == [
        "VISIONARY_COLOR is not a setting of this app and has no effect (see the README's Settings).",
        "VISIONARY_MAX_IMAGE_PER_DAY is not a setting of this app and has no effect: did you mean VISIONARY_MAX_IMAGES_PER_DAY?",
        "visionary_page_size is not a setting of this app and has no effect: did you mean VISIONARY_PAGE_SIZE?",
    ]


def test_the_known_setting_names_are_those_the_example_settings_and_the_readme_name():
    root = Path(__file__).resolve().parent.parent
    example = json.loads((root / "local.settings.example.json").read_text())["Values"]
    assert {name for name in example if name.startswith("VISIONARY_")} == SETTING_NAMES
    assert SETTING_NAMES <= set(re.findall(r"VISIONARY_[A-Z_]*[A-Z]", (root / "README.md").read_text()))
    code = "".join(path.read_text() for path in [root / "function_app.py", *(root / "visionary").glob("*.py")])
    assert set(re.findall(r"VISIONARY_[A-Z_]*[A-Z]", code)) == SETTING_NAMES


def test_secrets_stay_out_of_the_repr():
    settings = Settings.from_env({"accountName": "acct", "accountKey": "c2VjcmV0LWtleQ=="})
    assert "c2VjcmV0LWtleQ" not in repr(settings)
    models = Settings.from_env({"OPENAI_API_KEY": "sk-openai-secret", "AZURE_OPENAI_API_KEY": "azure-secret"})
    assert "secret" not in repr(models) and "secret" not in repr(models.models)
    connection = Settings.from_env({"VISIONARY_STORAGE_CONNECTION_STRING": "AccountName=a;AccountKey=c2VjcmV0"})
    assert "c2VjcmV0" not in repr(connection)


def test_the_model_named_to_the_sdk_is_the_deployment_on_azure():
    openai = Settings.from_env({"OPENAI_API_KEY": "sk", "AZURE_OPENAI_IMAGE_DEPLOYMENT": "ignored"}).models
    assert (openai.image_target, openai.chat_target) == (openai.image_model, openai.suggestion_model)
    azure = {"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com", "AZURE_OPENAI_API_KEY": "k"}
    deployments = {"AZURE_OPENAI_IMAGE_DEPLOYMENT": "pics", "AZURE_OPENAI_CHAT_DEPLOYMENT": "chat"}
    named = Settings.from_env({**azure, **deployments})
    assert (named.models.image_target, named.models.chat_target) == ("pics", "chat")
    unnamed = Settings.from_env(azure).models  # a deployment named after its model
    assert (unnamed.image_target, unnamed.chat_target) == (unnamed.image_model, unnamed.suggestion_model)


def test_a_model_setting_is_checked_only_for_the_service_that_reads_it():
    # A leftover of the other service in the shell is never sent anywhere.
    assert problems({"VISIONARY_PROVIDER": "offline", "OPENAI_API_KEY": "old key \u200b"}) == []
    azure = {"AZURE_OPENAI_ENDPOINT": "https://gallery.openai.azure.com/", "AZURE_OPENAI_API_KEY": "abc",
             "OPENAI_BASE_URL": "localhost:1234"}
    assert problems(azure) == []
    [problem] = problems({**azure, "AZURE_OPENAI_ENDPOINT": "gallery.openai.azure.com"})
    assert problem.startswith("AZURE_OPENAI_ENDPOINT must be an http:// or https:// URL")


def test_a_whole_number_is_plain_ascii_digits_within_its_bounds():
    # One reading for settings, the page limit, ports and a model answer's Content-Length.
    assert whole_number("42", 1, 500) == 42
    assert whole_number("0042", 1, 500) == 42
    for text in ("", "٣", "²", "1_000", "+4", " 4", "4.0", "0", "501", "9" * 5000):
        assert whole_number(text, 1, 500) is None, text
