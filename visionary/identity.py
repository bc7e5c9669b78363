"""Keyless sign-in: the Function App's managed identity, for storage and Azure OpenAI alike.

One identity signs in to both, so one setting names it: `AZURE_CLIENT_ID`, or else the
identity the Functions host signs in to its storage with (`AzureWebJobsStorage__clientId`
or `AzureWebJobsStorage__managedIdentityResourceId`). None of them: the system-assigned
identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # azure-identity is loaded for keyless operation only
    from azure.core.credentials_async import AsyncTokenCredential

CLIENT_ID_SETTINGS = ("AZURE_CLIENT_ID", "AzureWebJobsStorage__clientId")
RESOURCE_ID_SETTING = "AzureWebJobsStorage__managedIdentityResourceId"
# azure-identity's setting narrowing DefaultAzureCredential's chain; these values keep `az login` in it
TOKEN_CREDENTIALS_SETTING = "AZURE_TOKEN_CREDENTIALS"
_WITH_AZ_LOGIN = ("", "dev", "azureclicredential")


@dataclass(frozen=True)
class ManagedIdentity:
    """Which managed identity the app signs in as: a user-assigned one, by its client id or its
    resource id (/subscriptions/.../userAssignedIdentities/...), or else the system-assigned one."""

    client_id: str | None = None
    resource_id: str | None = None


def named_identity(environ: Mapping[str, str]) -> ManagedIdentity:
    """The identity the settings name, in their order: the app's own setting first."""
    for name in CLIENT_ID_SETTINGS:
        if value := environ.get(name, "").strip():
            return ManagedIdentity(client_id=value)
    if value := environ.get(RESOURCE_ID_SETTING, "").strip():
        return ManagedIdentity(resource_id=value)
    return ManagedIdentity()


def azure_credential(identity: ManagedIdentity) -> AsyncTokenCredential:
    """The chain of sign-ins azure-identity tries in turn: the managed identity on Azure, `az login`
    on a workstation. On Azure, AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential (an app setting)
    narrows it to the managed identity alone, as Microsoft advises for production.

    An identity named by resource id exists on Azure alone, where the chain would end at it:
    the managed identity signs in directly (DefaultAzureCredential takes client ids only).
    azure-identity passes `identity_config` on to the host's identity endpoint as it is, so
    it is named as App Service's endpoint (the Functions host's) names it: `mi_res_id`.
    """
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if identity.resource_id:
        return ManagedIdentityCredential(identity_config={"mi_res_id": identity.resource_id})
    # managed_identity_client_id=None would override the SDK's own AZURE_CLIENT_ID default.
    if identity.client_id:
        return DefaultAzureCredential(managed_identity_client_id=identity.client_id)
    return DefaultAzureCredential()


def how_it_signs_in(identity: ManagedIdentity, environ: Mapping[str, str]) -> str:
    """How `azure_credential` signs in, for an operator whose sign-in failed: `az login` helps
    only where the chain still holds it, and a managed identity signs in on Azure alone."""
    if identity.resource_id:
        return (f"as the managed identity {RESOURCE_ID_SETTING} names, which signs in on Azure alone "
                "(on a workstation, unset that setting and `az login`)")
    narrowed = environ.get(TOKEN_CREDENTIALS_SETTING, "").strip()
    if narrowed.lower() in _WITH_AZ_LOGIN:  # read as azure-identity reads it
        return "with DefaultAzureCredential (`az login` on a workstation)"
    return (f"with DefaultAzureCredential as {TOKEN_CREDENTIALS_SETTING}={narrowed} narrows it, without `az login` "
            "(a managed identity signs in on Azure alone; on a workstation, unset that setting and `az login`)")
