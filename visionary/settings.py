"""Settings, read from the environment.

Reading never fails: a missing or malformed setting becomes a `not_configured`
error (naming the setting) only when something needs it, so importing
`function_app.py` always succeeds and the host always lists its functions, and a
mistyped model setting does not take the gallery down with it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypedDict, overload
from urllib.parse import urlsplit, urlunsplit

from visionary.identity import ManagedIdentity, named_identity
from visionary.errors import ApiError

DEFAULT_CONTAINER = "images"
DEFAULT_SYSTEM_CONTAINER = "visionary-system"
DEFAULT_SAS_TTL_MINUTES = 30
MAX_SAS_TTL_MINUTES = 24 * 60
MIN_BODY_BYTES = 64 * 1024
DEFAULT_MAX_PROMPT_CHARS = 4000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_IMAGE_MODEL = "gpt-image-2"
DEFAULT_SUGGESTION_MODEL = "gpt-5.4-mini"
DEFAULT_IMAGE_SIZES = ("1024x1024", "1024x1536", "1536x1024")
DEFAULT_STORAGE_TIMEOUT_SECONDS = 10.0
DEFAULT_MODEL_TIMEOUT_SECONDS = 180.0  # a real image model can take a minute or more
DEFAULT_MODEL_MAX_RETRIES = 2  # the SDK's own default
# Azure's front end ends an HTTP request after 230 s: answer 504 ourselves before that,
# however many retries the SDK is still willing to make.
DEFAULT_MODEL_DEADLINE_SECONDS = 220.0
# generateImage as a whole: its storage steps as well as the model, inside the same 230 s.
DEFAULT_REQUEST_DEADLINE_SECONDS = 225.0
# What may follow the model, each within one storage timeout: the upload, the ledger's
# record of the answer (or the freeing of its key), the cap's return of a failed slot.
MAX_STORAGE_STEPS_AFTER_MODEL = 3
DEFAULT_AZURE_API_VERSION = "2025-04-01-preview"

STORAGE_SETTINGS = (
    "VISIONARY_STORAGE_CONNECTION_STRING",
    "accountName + accountKey",
    "VISIONARY_STORAGE_ACCOUNT_URL",
    "AzureWebJobsStorage (a connection string, or __accountName / __blobServiceUri)",
)

# Every VISIONARY_ setting the app reads (local.settings.example.json lists each). Another
# VISIONARY_ name is a typo whose setting takes no effect: a daily cap that caps nothing, say.
SETTING_NAMES = frozenset({
    "VISIONARY_PROVIDER", "VISIONARY_IMAGE_MODEL", "VISIONARY_SUGGESTION_MODEL", "VISIONARY_IMAGE_SIZES",
    "VISIONARY_STORAGE_CONNECTION_STRING", "VISIONARY_STORAGE_ACCOUNT_URL", "VISIONARY_CONTAINER",
    "VISIONARY_SYSTEM_CONTAINER", "VISIONARY_PUBLIC_BASE_URL", "VISIONARY_SAS_TTL_MINUTES",
    "VISIONARY_MAX_PROMPT_CHARS", "VISIONARY_PAGE_SIZE", "VISIONARY_MAX_IMAGES_PER_DAY",
    "VISIONARY_STORAGE_TIMEOUT_SECONDS", "VISIONARY_MODEL_TIMEOUT_SECONDS", "VISIONARY_MODEL_MAX_RETRIES",
    "VISIONARY_MODEL_DEADLINE_SECONDS", "VISIONARY_REQUEST_DEADLINE_SECONDS", "VISIONARY_AUTH_LEVEL",
})


def unknown_settings(environ: Mapping[str, str] | None = None) -> list[str]:
    """A sentence for each VISIONARY_ name that the app does not read, with the one it likely meant."""
    environ = os.environ if environ is None else environ
    sentences = []
    for name in sorted(n for n in environ if n.upper().startswith("VISIONARY_") and n not in SETTING_NAMES):
        meant = difflib.get_close_matches(name.upper(), SETTING_NAMES, n=1, cutoff=0.8)
        hint = f": did you mean {meant[0]}?" if meant else " (see the README's Settings)."
        sentences.append(f"{name} is not a setting of this app and has no effect{hint}")
    return sentences


@dataclass(frozen=True)
class StorageSettings:
    """Where the gallery lives. Exactly one way of reaching the account is set."""

    connection_string: str | None = None
    account_name: str | None = None
    account_key: str | None = None
    account_url: str | None = None  # signs in with DefaultAzureCredential
    identity: ManagedIdentity = ManagedIdentity()  # which one signs in, keyless only
    container: str = DEFAULT_CONTAINER
    system_container: str = DEFAULT_SYSTEM_CONTAINER
    public_base_url: str | None = None
    sas_ttl_minutes: int = DEFAULT_SAS_TTL_MINUTES
    timeout_seconds: float = DEFAULT_STORAGE_TIMEOUT_SECONDS

    def __repr__(self) -> str:  # keys and connection strings stay out of logs
        source = (
            "connection string" if self.connection_string
            else "account key" if self.account_key
            else "managed identity" if self.account_url
            else "none"
        )
        return f"StorageSettings(source={source!r}, container={self.container!r})"


PROVIDERS = ("openai", "azure", "offline")


@dataclass(frozen=True)
class ModelSettings:
    """Which model service draws and suggests, and how to reach it."""

    provider: str | None  # one of PROVIDERS; None: nothing configured
    image_model: str = DEFAULT_IMAGE_MODEL
    suggestion_model: str = DEFAULT_SUGGESTION_MODEL
    image_sizes: tuple[str, ...] = DEFAULT_IMAGE_SIZES
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    azure_endpoint: str | None = None
    azure_api_key: str | None = None  # None: Microsoft Entra ID via DefaultAzureCredential
    identity: ManagedIdentity = ManagedIdentity()  # which one signs in, keyless Azure OpenAI only
    api_version: str = DEFAULT_AZURE_API_VERSION
    image_deployment: str | None = None
    chat_deployment: str | None = None
    timeout_seconds: float = DEFAULT_MODEL_TIMEOUT_SECONDS  # one attempt
    max_retries: int = DEFAULT_MODEL_MAX_RETRIES
    deadline_seconds: float = DEFAULT_MODEL_DEADLINE_SECONDS  # all attempts together

    def __repr__(self) -> str:  # keys stay out of logs
        return f"ModelSettings(provider={self.provider!r}, image_model={self.image_model!r})"

    @property
    def default_size(self) -> str:
        return self.image_sizes[0]

    @property
    def image_target(self) -> str:
        """What the SDK's `model=` names for images: on Azure OpenAI, the deployment."""
        if self.provider == "azure" and self.image_deployment:
            return self.image_deployment
        return self.image_model

    @property
    def chat_target(self) -> str:
        """What the SDK's `model=` names for suggestions: on Azure OpenAI, the deployment."""
        if self.provider == "azure" and self.chat_deployment:
            return self.chat_deployment
        return self.suggestion_model


# What needs a setting: storage (every endpoint but suggestions), models (suggestions and
# generateImage), gallery pages (getImages), generation's own limits (generateImage).
Concern = Literal["storage", "models", "gallery", "generation"]


@dataclass(frozen=True)
class Problem:
    """A malformed setting, and what needs it: only requests that need it fail on it."""

    concern: Concern
    text: str


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings | None
    models: ModelSettings = ModelSettings(provider=None)
    page_size: int = DEFAULT_PAGE_SIZE
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_images_per_day: int | None = None  # None: no cap
    request_deadline_seconds: float = DEFAULT_REQUEST_DEADLINE_SECONDS  # generateImage, all steps
    problems: tuple[Problem, ...] = ()  # malformed settings, reported when something needs them

    @property
    def max_body_bytes(self) -> int:
        """generateImage's body limit: 64 KiB, or room for the longest prompt escaped at worst.

        One character can take 12 bytes of JSON (an emoji as two \\u escapes), so a limit
        of its own would refuse prompts that VISIONARY_MAX_PROMPT_CHARS allows.
        """
        return max(MIN_BODY_BYTES, 12 * self.max_prompt_chars + 1024)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        storage, models = _Reader(environ, "storage"), _Reader(environ, "models")
        gallery, generation = _Reader(environ, "gallery"), _Reader(environ, "generation")
        return cls(
            storage=_storage(storage),
            models=_models(models, generation),
            page_size=gallery.integer("VISIONARY_PAGE_SIZE", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
            max_prompt_chars=generation.integer("VISIONARY_MAX_PROMPT_CHARS", DEFAULT_MAX_PROMPT_CHARS, 1, 32_000),
            max_images_per_day=generation.optional_integer("VISIONARY_MAX_IMAGES_PER_DAY", 0, 10**9),
            request_deadline_seconds=generation.number(
                "VISIONARY_REQUEST_DEADLINE_SECONDS", DEFAULT_REQUEST_DEADLINE_SECONDS, 1, 3600
            ),
            problems=(*storage.problems, *models.problems, *gallery.problems, *generation.problems),
        )

    def require(self, *concerns: Concern) -> Settings:
        """These settings, when those `concerns` need are well formed; else 503 not_configured naming them."""
        if wrong := [problem.text for problem in self.problems if problem.concern in concerns]:
            raise ApiError.not_configured(" ".join(wrong))
        return self

    def unmet(self) -> list[str]:
        """Every setting that stops an endpoint, as its 503 would name it: what start-up prints."""
        unmet = [problem.text for problem in self.problems]
        named = {problem.concern for problem in self.problems}
        # require_storage and require_models raise their concern's problems first: named above.
        checks = [check for concern, check in (("storage", self.require_storage), ("models", self.require_models))
                  if concern not in named]
        for check in (*checks, self.require_request_deadline):
            try:
                check()
            except ApiError as error:
                unmet.append(error.message)
        return unmet

    def require_models(self) -> ModelSettings:
        models = self.require("models").models
        if models.provider is None:
            raise ApiError.not_configured(
                "No model service is configured: set OPENAI_API_KEY (OpenAI, or OPENAI_BASE_URL for a "
                "compatible server), or AZURE_OPENAI_ENDPOINT (Azure OpenAI), or VISIONARY_PROVIDER=offline."
            )
        if models.provider == "openai" and not (models.openai_api_key or models.openai_base_url):
            raise ApiError.not_configured(
                "VISIONARY_PROVIDER is openai: set OPENAI_API_KEY, or OPENAI_BASE_URL for a compatible server."
            )
        if models.provider == "azure" and not models.azure_endpoint:
            raise ApiError.not_configured("VISIONARY_PROVIDER is azure: set AZURE_OPENAI_ENDPOINT.")
        return models

    def require_request_deadline(self) -> float:
        """generateImage's deadline in seconds. It keeps up to MAX_STORAGE_STEPS_AFTER_MODEL storage
        timeouts for the steps after the model, so it must be longer; only generateImage needs it to be."""
        storage_timeout = self.storage.timeout_seconds if self.storage else DEFAULT_STORAGE_TIMEOUT_SECONDS
        if self.request_deadline_seconds <= MAX_STORAGE_STEPS_AFTER_MODEL * storage_timeout:
            raise ApiError.not_configured(
                f"VISIONARY_REQUEST_DEADLINE_SECONDS must be more than {MAX_STORAGE_STEPS_AFTER_MODEL} times "
                "VISIONARY_STORAGE_TIMEOUT_SECONDS: "
                "it keeps that long for the storage steps after the model."
            )
        return self.request_deadline_seconds

    def require_storage(self) -> StorageSettings:
        storage = self.require("storage").storage
        if storage is None:
            raise ApiError.not_configured(
                "Storage is not configured: set " + ", or ".join(STORAGE_SETTINGS) + "."
            )
        return storage


class _StorageCommon(TypedDict):
    """What StorageSettings hold whichever way they reach the account."""

    container: str
    system_container: str
    public_base_url: str | None
    sas_ttl_minutes: int
    timeout_seconds: float


def _storage(env: _Reader) -> StorageSettings | None:
    container = env.container_name("VISIONARY_CONTAINER", DEFAULT_CONTAINER)
    system_container = env.container_name("VISIONARY_SYSTEM_CONTAINER", DEFAULT_SYSTEM_CONTAINER)
    if system_container == container:
        # The gallery's SAS reads its whole container: the guards' records must live apart.
        env.problem("VISIONARY_SYSTEM_CONTAINER must differ from VISIONARY_CONTAINER.")
    common = _StorageCommon(
        container=container,
        system_container=system_container,
        public_base_url=env.link_base("VISIONARY_PUBLIC_BASE_URL"),
        sas_ttl_minutes=min(
            env.integer("VISIONARY_SAS_TTL_MINUTES", DEFAULT_SAS_TTL_MINUTES, 1, 10**6),
            MAX_SAS_TTL_MINUTES,
        ),
        timeout_seconds=env.number(
            "VISIONARY_STORAGE_TIMEOUT_SECONDS", DEFAULT_STORAGE_TIMEOUT_SECONDS, 0.1, 600
        ),
    )
    if connection_string := env.text("VISIONARY_STORAGE_CONNECTION_STRING"):
        return StorageSettings(connection_string=connection_string, **common)
    name, key = env.account_name("accountName"), env.text("accountKey")
    if name and key:
        return StorageSettings(account_name=name, account_key=key, **common)
    if name or key:  # half of the Node version's pair would quietly fall through to another account
        env.problem("accountName and accountKey go together: set both, or neither.")
    identity = named_identity(env.environ)
    if account_url := env.https_url("VISIONARY_STORAGE_ACCOUNT_URL"):
        return StorageSettings(account_url=account_url.rstrip("/"), identity=identity, **common)
    if connection_string := env.text("AzureWebJobsStorage"):
        return StorageSettings(connection_string=connection_string, **common)
    # The Functions host's own identity-based storage connection, when it has one.
    if service_uri := env.https_url("AzureWebJobsStorage__blobServiceUri"):
        return StorageSettings(account_url=service_uri.rstrip("/"), identity=identity, **common)
    if account := env.account_name("AzureWebJobsStorage__accountName"):
        return StorageSettings(account_url=f"https://{account}.blob.core.windows.net", identity=identity, **common)
    return None


def _models(env: _Reader, generation: _Reader) -> ModelSettings:
    """The model service; `generation` notes what generateImage alone reads (the sizes), so that a
    mistyped size leaves suggestions alone."""
    provider = (env.text("VISIONARY_PROVIDER") or "").lower() or None
    if provider is None:
        if env.text("AZURE_OPENAI_ENDPOINT"):
            provider = "azure"
        elif env.text("OPENAI_API_KEY") or env.text("OPENAI_BASE_URL"):
            provider = "openai"
    elif provider not in PROVIDERS:
        env.problem(f"VISIONARY_PROVIDER must be one of {', '.join(PROVIDERS)}, not {provider!r}.")
        provider = None
    image_model = env.text("VISIONARY_IMAGE_MODEL") or DEFAULT_IMAGE_MODEL
    suggestion_model = env.text("VISIONARY_SUGGESTION_MODEL") or DEFAULT_SUGGESTION_MODEL
    sizes = tuple(s.strip() for s in (env.text("VISIONARY_IMAGE_SIZES") or "").split(",") if s.strip())
    if unknown := [size for size in sizes if not _IMAGE_SIZE.fullmatch(size)]:
        # Each is sent to the model as it is: a typo would fail every generation that asks for it.
        generation.problem(
            f"VISIONARY_IMAGE_SIZES must list sizes like 1024x1024 (or auto), not {', '.join(unknown)}."
        )
    return ModelSettings(
        provider=provider,
        image_model=image_model,
        suggestion_model=suggestion_model,
        image_sizes=sizes or DEFAULT_IMAGE_SIZES,
        # Checked only for the service in use: a leftover of the other in the shell is never read.
        openai_api_key=env.api_key("OPENAI_API_KEY", check=provider == "openai"),
        openai_base_url=env.service_url("OPENAI_BASE_URL", check=provider == "openai"),
        azure_endpoint=env.service_url("AZURE_OPENAI_ENDPOINT", check=provider == "azure"),
        azure_api_key=env.api_key("AZURE_OPENAI_API_KEY", check=provider == "azure"),
        identity=named_identity(env.environ),
        api_version=env.text("OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION,
        image_deployment=env.text("AZURE_OPENAI_IMAGE_DEPLOYMENT"),  # None: named as the model
        chat_deployment=env.text("AZURE_OPENAI_CHAT_DEPLOYMENT"),
        timeout_seconds=env.number("VISIONARY_MODEL_TIMEOUT_SECONDS", DEFAULT_MODEL_TIMEOUT_SECONDS, 0.1, 900),
        max_retries=env.integer("VISIONARY_MODEL_MAX_RETRIES", DEFAULT_MODEL_MAX_RETRIES, 0, 10),
        deadline_seconds=env.number(
            "VISIONARY_MODEL_DEADLINE_SECONDS", DEFAULT_MODEL_DEADLINE_SECONDS, 0.1, 3600
        ),
    )


_CONTAINER_NAME = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_IMAGE_SIZE = re.compile(r"auto|[1-9][0-9]{1,4}x[1-9][0-9]{1,4}")
# Plain ASCII decimals: int() and float() would also take "1_000", "٣" and "1e3".
MAX_NUMBER_CHARS = 32
_WHOLE = re.compile(rf"[0-9]{{1,{MAX_NUMBER_CHARS}}}")
ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")  # what Azure allows; Azurite's devstoreaccount1 too
_API_KEY = re.compile(r"[!-~]+")  # what a header may carry: printable ASCII, no spaces
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


class _Reader:
    """Typed reads of an environment that note what is malformed instead of raising."""

    def __init__(self, environ: Mapping[str, str], concern: Concern) -> None:
        self.environ = environ
        self.concern: Concern = concern
        self.problems: list[Problem] = []

    def problem(self, text: str) -> None:
        self.problems.append(Problem(self.concern, text))

    def text(self, name: str) -> str | None:
        value = self.environ.get(name, "").strip()
        return value or None

    def container_name(self, name: str, default: str) -> str:
        """A blob container's name as storage accepts it (3-63 of a-z, 0-9 and single hyphens)."""
        value = self.text(name)
        if value is None:
            return default
        if not _CONTAINER_NAME.fullmatch(value):
            self.problem(
                f"{name} must be 3 to 63 lowercase letters, digits and single hyphens, not {value!r}."
            )
        return value

    def https_url(self, name: str) -> str | None:
        """An account URL for a managed identity, which signs in over HTTPS only."""
        value = self.text(name)
        if value is None:
            return None
        if not value.lower().startswith("https://") or not _hostname(value):
            self.problem(f"{name} must be an https:// URL: a managed identity signs in over HTTPS only.")
        elif "?" in value or "#" in value:
            # A SAS pasted from the portal would ride along in every link the app hands out.
            self.problem(f"{name} must be the account's URL alone, without a query or a SAS.")
        elif urlsplit(value).path.strip("/") and _path_dropped(value):
            # A container's URL: storage drops the path of an account's own endpoint, so the app
            # would quietly use VISIONARY_CONTAINER. (Azurite's path-style URL names the account there.)
            self.problem(f"{name} must be the account's URL alone, without a container: "
                         "name the container in VISIONARY_CONTAINER.")
        else:
            # Host names ignore case, but the storage SDK reads the account's name off the host as
            # written, and a name in capitals is no account's: it would sign links with it.
            scheme, host, path, _, _ = urlsplit(value)
            return urlunsplit((scheme.lower(), host.lower(), path, "", ""))
        return value

    def api_key(self, name: str, *, check: bool) -> str | None:
        """A key sent in a header (not repeated: it is a secret). A zero-width space or a line
        break pasted with it would fail every call in the HTTP client, as a 500."""
        value = self.text(name)
        if check and value is not None and not _API_KEY.fullmatch(value):
            self.problem(f"{name} holds a space, a line break or a character that is not ASCII: paste the key again.")
        return value

    def service_url(self, name: str, *, check: bool) -> str | None:
        """A model service's address: http(s), a host, no user:password (which the SDK refuses
        beside its own Authorization header). Not repeated: it may carry a password."""
        value = self.text(name)
        if value is None or not check:
            return value
        try:
            parts = urlsplit(value)
            usable = (
                parts.scheme.lower() in ("http", "https")
                and bool(parts.hostname)
                and parts.port != 0  # .port raises ValueError for one that is no port
                and "@" not in parts.netloc
            )
        except ValueError:  # an unclosed [IPv6 host, a port that is no number
            usable = False
        if not usable:
            self.problem(f"{name} must be an http:// or https:// URL with a host and no user:password in it.")
        return value

    def link_base(self, name: str) -> str | None:
        """A base for the links the app hands out: an absolute http(s) URL, the SAS goes after it."""
        value = self.text(name)
        if value is None:
            return None
        scheme = value.split(":", 1)[0].lower()
        if scheme not in ("http", "https") or not _hostname(value) or "?" in value or "#" in value:
            # The value is not repeated: a SAS pasted with it must not reach a response.
            self.problem(
                f"{name} must be an http:// or https:// URL with no query, such as https://cdn.example.com/images."
            )
            return None
        return value.rstrip("/")

    def account_name(self, name: str) -> str | None:
        """A storage account's name, as Azure allows one (not repeated: it may be a pasted key)."""
        value = self.text(name)
        if value is not None and not ACCOUNT_NAME.fullmatch(value):
            self.problem(f"{name} must be a storage account's name: 3 to 24 lowercase letters and digits.")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        return int(self.number(name, default, low, high, whole=True))

    def optional_integer(self, name: str, low: int, high: int) -> int | None:
        """A whole number, or None when the setting is absent (or malformed: reported)."""
        value = self.number(name, None, low, high, whole=True)
        return None if value is None else int(value)

    @overload
    def number(self, name: str, default: float, low: float, high: float, whole: bool = False) -> float: ...

    @overload
    def number(self, name: str, default: None, low: float, high: float, whole: bool = False) -> float | None: ...

    def number(self, name: str, default: float | None, low: float, high: float, whole: bool = False) -> float | None:
        raw = self.text(name)
        if raw is None:
            return default
        value: float | None
        if whole:
            value = whole_number(raw, int(low), int(high))
        else:
            value = float(raw) if len(raw) <= MAX_NUMBER_CHARS and _DECIMAL.fullmatch(raw) else None
        if value is None or not low <= value <= high:
            kind = "a whole number" if whole else "a number"
            shown = raw if len(raw) <= MAX_NUMBER_CHARS else raw[:MAX_NUMBER_CHARS] + "..."
            self.problem(f"{name} must be {kind} from {low} to {high}, not {shown!r}.")
            return default
        return value


def whole_number(text: str, low: int, high: int) -> int | None:
    """`text` as a whole number from `low` to `high`, or None: plain ASCII digits, and no more
    than 32 of them (int() would take "1_000" and "٣", and refuses over 4,300 digits with a
    ValueError). For settings, query parameters, ports and header values alike."""
    if _WHOLE.fullmatch(text) and low <= (value := int(text)) <= high:
        return value
    return None


def auth_level(environ: Mapping[str, str] | None = None) -> str:
    """`VISIONARY_AUTH_LEVEL`: `anonymous` (default) or `function`.

    Read when `function_app.py` is imported, so it must never raise: a value it
    does not know falls back to `function`, the safer of the two.
    """
    value = (os.environ if environ is None else environ).get("VISIONARY_AUTH_LEVEL", "").strip().lower()
    if value in ("", "anonymous"):
        return "ANONYMOUS"
    return "FUNCTION"


def _path_dropped(url: str) -> bool:
    """Whether the storage SDK drops this URL's path: it does for an account's own endpoint
    (`acct.blob.core.windows.net`, sovereign clouds too), and keeps it elsewhere (Azurite's
    path-style URLs, `https://azurite:10000/devstoreaccount1` in a compose file)."""
    return ".blob.core." in (_hostname(url) or "")


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:  # such as an unclosed [IPv6 host
        return None
