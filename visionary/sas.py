"""Read-only container SAS tokens, the only way anyone reads the private gallery.

Two signers share one shape: `AccountKeySigner` makes a service SAS from the
account key; the managed-identity path makes a user-delegation SAS. Both are
read-only, container-scoped, start five minutes back (clock skew) and are
HTTPS-only whenever the account endpoint is HTTPS.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol
from urllib.parse import quote

from azure.storage.blob import ContainerSasPermissions, generate_container_sas

CLOCK_SKEW = timedelta(minutes=5)
PERMISSIONS = "r"


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

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        now = now or datetime.now(timezone.utc)
        return now - CLOCK_SKEW, (now + self.ttl).replace(microsecond=0)


class AccountKeySigner:
    """Service SAS signed with the storage account key."""

    def __init__(self, policy: SasPolicy, account_key: str) -> None:
        self._policy = policy
        self._account_key = account_key

    async def sign(self) -> ReadSas:
        policy = self._policy
        start, expiry = policy.window()
        token = generate_container_sas(
            policy.account_name,
            policy.container,
            account_key=self._account_key,
            permission=ContainerSasPermissions(read=True),
            start=start,
            expiry=expiry,
            protocol=policy.protocol,
        )
        return ReadSas(token, expiry, policy.base_url)

    def __repr__(self) -> str:
        return f"AccountKeySigner(account={self._policy.account_name!r})"
