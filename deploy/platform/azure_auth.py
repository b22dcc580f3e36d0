"""Entra ID credentials for the Azure SDKs: azure-identity's chain, never a personal access token.

In a pipeline step (AzureCLI@2 with workload identity federation) the chain finds the Azure CLI
login; on a developer's machine, `az login`; in a Databricks notebook, the automation identity's
secret from the Key Vault-backed scope, exported as AZURE_CLIENT_ID/SECRET/TENANT_ID.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from config import CLOUDS, EnvConfig

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


def identity_options(env: EnvConfig, connection_verify: str | None = None) -> dict[str, Any]:
    """Keyword arguments every azure-identity credential of `env` takes: its authority, and TLS.

    `connection_verify` is a CA bundle for a private CA; left out, the system store (or
    REQUESTS_CA_BUNDLE) applies.
    """
    # MSAL checks an authority against Microsoft's list of clouds ("instance discovery"), which an
    # authority outside those clouds (Azure Stack, a private test service) is not on.
    known = env.cloud.authority_host.rstrip("/") in {cloud.authority_host for cloud in CLOUDS.values()}
    options: dict[str, Any] = {"authority": env.cloud.authority_host, "disable_instance_discovery": not known}
    if connection_verify:
        options["connection_verify"] = connection_verify
    return options


def credential(env: EnvConfig, connection_verify: str | None = None) -> TokenCredential:
    """The caller's own identity: DefaultAzureCredential against the environment's cloud."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(
        exclude_interactive_browser_credential=True, **identity_options(env, connection_verify)
    )


def scope(resource: str) -> str:
    """The OAuth scope for an Azure resource URL, e.g. https://graph.microsoft.com/.default."""
    return resource.rstrip("/") + "/.default"
