"""Read-only container SAS tokens, the only way anyone reads the private gallery.

Two signers share one shape: `AccountKeySigner` makes a service SAS from the
account key; the managed-identity path makes a user-delegation SAS. Both are
read-only, container-scoped, HTTPS-only whenever the account endpoint is HTTPS,
and signed for windows handed out in steps (`SasPolicy.window`), so that links
stay the same, and cached, from one gallery refresh to the next. As the link of a
window is always the same, each signer signs it once (`LastLink`).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol
from urllib.parse import quote

from azure.storage.blob import ContainerSasPermissions, UserDelegationKey, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient

from visionary.errors import ApiError

CLOCK_SKEW = timedelta(minutes=5)
MAX_WINDOW_STEP = timedelta(minutes=5)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
PERMISSIONS = "r"  # read, and nothing else: what the token is signed with and what its answer says
# A delegation key is fetched to last an hour beyond the link it first signs, and reused
# for every later link that ends before it does, while more than five minutes remain.
DELEGATION_KEY_SPARE = timedelta(hours=1)
DELEGATION_KEY_MARGIN = timedelta(minutes=5)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ReadSas:
    token: str
    expires_on: datetime
    base_url: str  # the container URL, or the CDN base that replaces it

    def url_for(self, blob: str) -> str:
        return f"{self.base_url}/{quote(blob, safe='/~')}?{self.token}"

    def to_json(self) -> dict[str, str]:
        return {
            "sasToken": self.token,
            "expiresOn": self.expires_on.isoformat().replace("+00:00", "Z"),
            "containerUrl": self.base_url,
            "permissions": PERMISSIONS,
        }


class ReadSigner(Protocol):
    async def sign(self) -> ReadSas: ...


@dataclass(frozen=True)
class SasPolicy:
    account_name: str
    container: str
    container_url: str
    ttl: timedelta
    public_base_url: str | None = None

    @property
    def protocol(self) -> str | None:
        return "https" if self.container_url.startswith("https://") else None

    @property
    def base_url(self) -> str:
        return self.public_base_url or self.container_url

    @property
    def step(self) -> timedelta:
        """How long one window is handed out: a sixth of the TTL, at most five minutes."""
        return min(MAX_WINDOW_STEP, self.ttl / 6)

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """Start and expiry of a link signed `now`: the same for every link of one step.

        Links that do not change from one gallery refresh to the next stay in the browser's
        (and a CDN's) cache: the blobs are immutable. Each lives at least the TTL from now.
        """
        now = now or _utc_now()
        issued = _EPOCH + (now - _EPOCH) // self.step * self.step
        return issued - CLOCK_SKEW, (issued + self.step + self.ttl).replace(microsecond=0)

    def read_sas(
        self,
        start: datetime,
        expiry: datetime,
        *,
        account_key: str | None = None,
        user_delegation_key: UserDelegationKey | None = None,
    ) -> ReadSas:
        """The read-only container SAS for the window, signed with one of the two keys."""
        token = generate_container_sas(
            self.account_name,
            self.container,
            account_key=account_key,
            user_delegation_key=user_delegation_key,
            permission=ContainerSasPermissions.from_string(PERMISSIONS),
            start=start,
            expiry=expiry,
            protocol=self.protocol,
        )
        return ReadSas(token, expiry, self.base_url)


class LastLink:
    """The link a signer made last, and what it made it for (its window, and a delegation key).

    A window's link is the same whenever it is signed, so it is signed once: signing (the
    SAS's fields and an HMAC) took about 0.1 ms of each of the two signs of a generation,
    and of the sign of each gallery page.
    """

    def __init__(self) -> None:
        self._made_for: tuple[object, ...] | None = None
        self._link: ReadSas | None = None

    def get(self, made_for: tuple[object, ...], sign: Callable[[], ReadSas]) -> ReadSas:
        """The last link if it was made for `made_for` (compared with ==); else a new one from `sign`."""
        if self._link is None or self._made_for != made_for:
            self._link, self._made_for = sign(), made_for
        return self._link


class AccountKeySigner:
    """Service SAS signed with the storage account key."""

    def __init__(self, policy: SasPolicy, account_key: str) -> None:
        try:
            base64.b64decode(account_key, validate=True)
        except ValueError:  # binascii.Error, or a character that is not ASCII (a zero-width space)
            raise ApiError.not_configured(
                "The storage account key is not valid base64: check the accountKey setting or the key in the storage connection string."
            ) from None
        self._policy = policy
        self._account_key = account_key
        self._last = LastLink()

    async def sign(self) -> ReadSas:
        start, expiry = self._policy.window()
        return self._last.get(
            (start, expiry), lambda: self._policy.read_sas(start, expiry, account_key=self._account_key)
        )

    def __repr__(self) -> str:
        return f"AccountKeySigner(account={self._policy.account_name!r})"


class UserDelegationSigner:
    """User-delegation SAS, for storage reached with a token (managed identity).

    The delegation key costs a round trip to storage (and a role that may get one:
    Storage Blob Data Contributor can, or Storage Blob Delegator), so one key serves
    every link until it nears its expiry.
    """

    def __init__(
        self, policy: SasPolicy, service: BlobServiceClient, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self._policy = policy
        self._service = service
        self._clock = clock
        self._key: UserDelegationKey | None = None
        self._key_expiry = datetime.min.replace(tzinfo=timezone.utc)
        self._lock = asyncio.Lock()
        self._last = LastLink()

    async def sign(self) -> ReadSas:
        start, expiry = self._policy.window(self._clock())
        key = await self._delegation_key(start, needed_until=expiry)
        # A new key makes a new link (UserDelegationKey compares by identity).
        return self._last.get(
            (start, expiry, key), lambda: self._policy.read_sas(start, expiry, user_delegation_key=key)
        )

    async def _delegation_key(self, start: datetime, needed_until: datetime) -> UserDelegationKey:
        """A key whose life covers the link's: from `start` (the window's, which later links
        only move on from) to past `needed_until`."""
        async with self._lock:  # one fetch, however many requests need a key at once
            now = self._clock()
            if self._key is None or now >= self._key_expiry - DELEGATION_KEY_MARGIN or needed_until > self._key_expiry:
                expiry = (needed_until + DELEGATION_KEY_SPARE).replace(microsecond=0)
                # Key and expiry change together, once storage has answered: a failed or
                # cancelled fetch leaves the old pair, so the next link fetches again.
                self._key = await self._service.get_user_delegation_key(start, expiry)
                self._key_expiry = expiry
            return self._key

    def __repr__(self) -> str:
        return f"UserDelegationSigner(account={self._policy.account_name!r})"
