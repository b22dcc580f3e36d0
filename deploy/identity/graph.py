"""Microsoft Graph, for the one thing the rotation needs: an application's password credentials.

Three REST calls (`addPassword`, `removePassword`, and reading `passwordCredentials`) go through
azure-core's `PipelineClient`, with azure-identity's token through `BearerTokenCredentialPolicy`
and azure-core's `RetryPolicy` for throttling (429 with Retry-After) and transient failures.
`msgraph-sdk` would do the same through kiota and a generated model of all of Graph: far more to
install and to import for three calls.

Permission: Graph `Application.ReadWrite.OwnedBy` (application permission) for the caller, with
the caller an owner of the application. That lets it manage this application's credentials and
no other application's.

The secret text that `addPassword` returns exists once, in `NewPassword.secret`, which is kept out
of `repr()`. HttpLoggingPolicy logs headers (Authorization redacted) and never bodies; nothing here
enables body logging.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from azure.core import PipelineClient
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline import policies
from azure.core.rest import HttpRequest

from deploy.platform.azure_auth import scope

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

API_VERSION = "v1.0"
ADD_PASSWORD_ATTEMPTS = 3


@dataclass(frozen=True)
class PasswordCredential:
    """One client secret of an application, as Graph lists it (never with its text)."""

    key_id: str
    display_name: str
    start: datetime
    end: datetime
    hint: str = ""

    def is_valid(self, now: datetime) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True)
class NewPassword:
    """The credential `addPassword` created, with its secret text: the only copy until Key Vault."""

    credential: PasswordCredential
    secret: str = field(repr=False)


class GraphApplications:
    """An application's password credentials through Graph REST; retries come from azure-core."""

    def __init__(self, graph_url: str, credential: TokenCredential, **client_kwargs: Any):
        """`client_kwargs` go to azure-core's configuration and transport, e.g. `connection_verify`."""
        self._base_url = f"{graph_url.rstrip('/')}/{API_VERSION}"
        self._backoff = float(client_kwargs.get("retry_backoff_factor", 0.8))
        self._client: PipelineClient = PipelineClient(
            base_url=self._base_url,
            policies=[
                policies.RequestIdPolicy(**client_kwargs),
                policies.HeadersPolicy(**client_kwargs),
                policies.UserAgentPolicy("churn-deploy", **client_kwargs),
                policies.ProxyPolicy(**client_kwargs),
                policies.ContentDecodePolicy(**client_kwargs),
                policies.RedirectPolicy(**client_kwargs),
                policies.RetryPolicy(**client_kwargs),
                policies.BearerTokenCredentialPolicy(credential, scope(graph_url)),
                policies.HttpLoggingPolicy(**client_kwargs),
            ],
            **client_kwargs,
        )

    def add_password(self, application_id: str, display_name: str, end: datetime) -> NewPassword:
        """`POST /applications/{id}/addPassword`; the returned secret text is shown by Graph only once.

        Never retried blindly: azure-core retries a POST answered 500, 503 or 504, and an addPassword
        that succeeded before its answer was lost would leave a credential whose secret nobody has. Each
        attempt carries a display name of its own; after a failure that may have been applied, the
        credentials bearing that name are removed (their text is lost) before the next attempt."""
        path = f"/applications/{application_id}/addPassword"
        for attempt in range(1, ADD_PASSWORD_ATTEMPTS + 1):
            attempt_name = f"{display_name} [{secrets.token_hex(4)}]"
            body = {"passwordCredential": {"displayName": attempt_name, "endDateTime": _graph_time(end)}}
            try:
                created = self._send("POST", path, body, retry_total=0)
            except (HttpResponseError, ServiceResponseError, ServiceRequestError) as error:
                status = getattr(error, "status_code", None)
                if (status is not None and status < 500 and status != 429) or attempt == ADD_PASSWORD_ATTEMPTS:
                    raise
                self._remove_named(application_id, attempt_name)
                time.sleep(self._backoff * 2 ** (attempt - 1))
                continue
            return NewPassword(credential=_credential(created), secret=created["secretText"])
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _remove_named(self, application_id: str, display_name: str) -> None:
        """Remove the credentials an unanswered addPassword may have created (found by their display name)."""
        for credential in self.password_credentials(application_id):
            if credential.display_name == display_name:
                self.remove_password(application_id, credential.key_id)

    def remove_password(self, application_id: str, key_id: str) -> None:
        """`POST /applications/{id}/removePassword`: that secret stops authenticating."""
        self._send("POST", f"/applications/{application_id}/removePassword", {"keyId": key_id})

    def password_credentials(self, application_id: str) -> list[PasswordCredential]:
        """The application's client secrets (key id, name, validity; Graph never returns their text)."""
        application = self._send("GET", f"/applications/{application_id}?$select=id,passwordCredentials")
        return [_credential(item) for item in application.get("passwordCredentials") or []]

    def close(self) -> None:
        self._client.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        """One Graph call; `options` go to the pipeline (e.g. retry_total=0 for this request only)."""
        request = HttpRequest(method, self._base_url + path, json=body)
        response = self._client.send_request(request, **options)
        if response.status_code >= 400:
            # Graph's {"error": {"code", "message"}} becomes the message; error bodies carry no secret.
            raise HttpResponseError(response=response)
        return response.json() if response.content else {}


def _credential(item: dict[str, Any]) -> PasswordCredential:
    return PasswordCredential(
        key_id=item["keyId"],
        display_name=item.get("displayName") or "",
        start=_parse_time(item["startDateTime"]),
        end=_parse_time(item["endDateTime"]),
        hint=item.get("hint") or "",
    )


def _graph_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    # Graph writes 7 fractional digits ("2026-01-01T00:00:00.1234567Z"); fromisoformat takes at most 6.
    head, _, tail = text.rstrip("Z").partition(".")
    moment = datetime.fromisoformat(head + (f".{tail[:6]}" if tail else ""))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
