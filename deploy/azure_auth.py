"""Entra ID credentials for the Azure SDKs: azure-identity's chain, never a personal access token.

In a pipeline step (AzureCLI@2 with workload identity federation) the chain finds the Azure CLI
login; on a developer's machine, `az login`; in a Databricks notebook, the automation identity's
secret from the Key Vault-backed scope, exported as AZURE_CLIENT_ID/SECRET/TENANT_ID.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlparse

from config import EnvConfig

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


def credential(env: EnvConfig) -> TokenCredential:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(
        authority=urlparse(env.cloud.authority_host).netloc,
        exclude_interactive_browser_credential=True,
    )


def scope(resource: str) -> str:
    """The OAuth scope for an Azure resource URL, e.g. https://graph.microsoft.com/.default."""
    return resource.rstrip("/") + "/.default"
