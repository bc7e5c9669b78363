"""Keyless sign-in: the Function App's managed identity, for storage and Azure OpenAI alike.

One identity signs in to both, so one setting names it: `AZURE_CLIENT_ID`, or else the
`AzureWebJobsStorage__clientId` the Functions host signs in with. Neither: the
system-assigned identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # azure-identity is loaded for keyless operation only
    from azure.identity.aio import DefaultAzureCredential

CLIENT_ID_SETTINGS = ("AZURE_CLIENT_ID", "AzureWebJobsStorage__clientId")


def client_id(environ: Mapping[str, str]) -> str | None:
    """The user-assigned identity the app signs in as; None for the system-assigned one."""
    for name in CLIENT_ID_SETTINGS:
        if value := environ.get(name, "").strip():
            return value
    return None


def azure_credential(client_id: str | None) -> DefaultAzureCredential:
    """The chain of sign-ins azure-identity tries in turn: the managed identity on Azure, `az login`
    on a workstation. On Azure, AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential (an app setting)
    narrows it to the managed identity alone, as Microsoft advises for production."""
    from azure.identity.aio import DefaultAzureCredential

    # managed_identity_client_id=None would override the SDK's own AZURE_CLIENT_ID default.
    return DefaultAzureCredential(managed_identity_client_id=client_id) if client_id else DefaultAzureCredential()
