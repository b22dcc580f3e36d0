"""A local HTTPS stand-in for the Azure services the secret rotation calls, for the real SDK clients.

One server on 127.0.0.1 (self-signed certificate made here) answers, routed by path:
- Entra ID: `/{tenant}/v2.0/.well-known/openid-configuration` and `/{tenant}/oauth2/v2.0/token`
  (client credentials). It issues tokens only for client secrets it knows: the admin's, and the
  application's passwords once their replication delay has passed; removed ones stop working.
- Microsoft Graph: `/v1.0/applications/{id}` (passwordCredentials), `addPassword`, `removePassword`.
- Key Vault: `/secrets/...` (set a version, list secrets, list versions), with the 401 challenge the
  SDK expects on its first, body-less request.
- ARM: role definitions (list by name, get by id) and role assignments (list for a scope by principal).

Every service checks the bearer token: issued here, to the admin, for that service's audience.
`faults` makes one operation answer with an HTTP error; `requests` records what was called.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import math
import re
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VAULT_RESOURCE = "https://vault.azure.net"
UTC = dt.UTC


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1; returns (cert.pem, key.pem)."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Password:
    key_id: str
    display_name: str
    start: dt.datetime
    end: dt.datetime
    secret: str = field(repr=False)
    usable_from: float = 0.0  # time.monotonic() from which the token endpoint accepts it

    def as_graph(self, with_secret: bool = False) -> dict[str, Any]:
        item = {
            "keyId": self.key_id, "displayName": self.display_name, "hint": self.secret[:3],
            "customKeyIdentifier": None, "startDateTime": _graph_time(self.start), "endDateTime": _graph_time(self.end),
        }
        return {**item, "secretText": self.secret} if with_secret else item


class FakeAzure:
    """The fake services and their state; use as a context manager (starts and stops the server)."""

    def __init__(self, cert: Path, key: Path, *, subscription_id: str, tenant_id: str = "tenant-0001"):
        self.cert, self.key = cert, key
        self.tenant_id = tenant_id
        self.subscription_id = subscription_id
        self.application_object_id = str(uuid.uuid4())
        self.client_id = str(uuid.uuid4())
        self.principal_id = str(uuid.uuid4())
        self.admin_client_id = str(uuid.uuid4())
        self.admin_secret = secrets.token_urlsafe(24)
        self.passwords: dict[str, Password] = {}
        self.vault: dict[str, list[dict[str, Any]]] = {}  # secret name -> versions, oldest first
        self.role_definitions: dict[str, str] = {}  # GUID -> role name
        self.role_assignments: list[dict[str, str]] = []  # {"principal", "role_guid", "scope"}
        self.replication_delay = 0.0  # seconds before a new password authenticates; math.inf: never
        self.faults: dict[str, int] = {}  # addPassword, removePassword, listPasswords, setSecret, roleAssignments
        self.lost_answers: dict[str, int] = {}  # addPassword: applied, then answered 504 this many times
        self.write_lands_then_fails = False  # setSecret stores the version, then answers with an error
        self.requests: list[tuple[str, str]] = []
        self.issued_secrets: list[str] = []  # every secret text this fake ever handed out
        self.token_attempts: list[tuple[str, bool]] = []  # (client id, accepted)
        self._tokens: dict[str, tuple[str, str]] = {}  # token -> (client id, audience)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # --- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> FakeAzure:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.base_url = f"https://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server and self._thread
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- seeding and inspection ------------------------------------------------------------------
    def add_password(self, display_name: str, start: dt.datetime, end: dt.datetime) -> Password:
        password = Password(str(uuid.uuid4()), display_name, start, end, secrets.token_urlsafe(30))
        password.usable_from = time.monotonic() + self.replication_delay
        with self._lock:
            self.passwords[password.key_id] = password
            self.issued_secrets.append(password.secret)
        return password

    def store_secret(self, name: str, value: str, tags: dict[str, str] | None = None, exp: float | None = None) -> None:
        version = uuid.uuid4().hex
        now = int(time.time())
        with self._lock:
            self.vault.setdefault(name, []).append({
                "value": value, "id": f"{self.base_url}/secrets/{name}/{version}", "contentType": None,
                "tags": tags or {}, "attributes": {"enabled": True, "created": now, "updated": now, "exp": exp},
            })

    def latest_secret(self, name: str) -> dict[str, Any] | None:
        versions = self.vault.get(name)
        return versions[-1] if versions else None

    def accepts(self, client_id: str, secret: str) -> bool:
        """Would the token endpoint issue a token for this client id and secret now?"""
        if client_id == self.admin_client_id:
            return secret == self.admin_secret
        if client_id != self.client_id:
            return False
        now = time.monotonic()
        return any(p.secret == secret and p.usable_from <= now for p in self.passwords.values())

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.requests if method not in ("GET", "HEAD")
                and "/oauth2/" not in path]

    def role_definition_id(self, guid: str) -> str:
        return f"/subscriptions/{self.subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{guid}"

    # --- the services ----------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes) -> tuple[int, Any, dict]:
        path = re.sub("/{2,}", "/", path)
        self.requests.append((method, path))
        if path.endswith("/.well-known/openid-configuration"):
            return self._openid_configuration(path)
        if path.endswith("/oauth2/v2.0/token"):
            return self._token(parse_qs(body.decode()))
        if path.startswith("/secrets"):
            if not self._authorized(headers, VAULT_RESOURCE):
                challenge = f'Bearer authorization="{self.base_url}/{self.tenant_id}", resource="{VAULT_RESOURCE}"'
                return 401, {"error": {"code": "Unauthorized", "message": "no token"}}, {"WWW-Authenticate": challenge}
            return self._key_vault(method, path, json.loads(body or b"null"))
        if not self._authorized(headers, self.base_url):
            return 401, {"error": {"code": "InvalidAuthenticationToken", "message": "bad token"}}, {}
        if path.startswith("/v1.0/"):
            return self._graph(method, path, json.loads(body or b"null"))
        if "/providers/Microsoft.Authorization/" in path:
            return self._authorization(path, query.get("$filter", ""))
        return 404, {"error": {"code": "NotFound", "message": path}}, {}

    def _openid_configuration(self, path: str) -> tuple[int, Any, dict]:
        tenant = path.strip("/").split("/")[0]
        base = f"{self.base_url}/{tenant}"
        return 200, {
            "token_endpoint": f"{base}/oauth2/v2.0/token", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "issuer": f"{base}/v2.0", "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        }, {}

    def _token(self, form: dict[str, list[str]]) -> tuple[int, Any, dict]:
        client_id = form.get("client_id", [""])[0]
        accepted = self.accepts(client_id, form.get("client_secret", [""])[0])
        self.token_attempts.append((client_id, accepted))
        if not accepted:
            return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."}, {}
        audience = form.get("scope", [""])[0].removesuffix("/.default")
        oid = self.principal_id if client_id == self.client_id else "admin-object-id"
        claims = {"aud": audience, "oid": oid, "appid": client_id, "tid": self.tenant_id, "exp": time.time() + 3600}
        token = ".".join(_b64(part) for part in (json.dumps({"alg": "none"}), json.dumps(claims), "fake"))
        with self._lock:
            self._tokens[token] = (client_id, audience)
        return 200, {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": token}, {}

    def _authorized(self, headers: Any, audience: str) -> bool:
        token = (headers.get("Authorization") or "").removeprefix("Bearer ")
        return self._tokens.get(token) == (self.admin_client_id, audience)

    def _fault(self, operation: str) -> tuple[int, Any, dict] | None:
        status = self.faults.get(operation)
        if status is None:
            return None
        return status, {"error": {"code": "InjectedFault", "message": f"{operation} refused by the test"}}, {}

    def _graph(self, method: str, path: str, body: Any) -> tuple[int, Any, dict]:
        match = re.fullmatch(r"/v1\.0/applications/([^/]+)(/addPassword|/removePassword)?", path)
        if not match or match.group(1) != self.application_object_id:
            return 404, {"error": {"code": "Request_ResourceNotFound", "message": "no such application"}}, {}
        action = match.group(2)
        if method == "GET" and action is None:
            fault = self._fault("listPasswords")
            return fault or (200, {"id": self.application_object_id,
                                   "passwordCredentials": [p.as_graph() for p in self.passwords.values()]}, {})
        if method == "POST" and action == "/addPassword":
            fault = self._fault("addPassword")
            if fault:
                return fault
            requested = body["passwordCredential"]
            end = dt.datetime.fromisoformat(requested["endDateTime"].replace("Z", "+00:00"))
            created = self.add_password(requested.get("displayName", ""), dt.datetime.now(UTC), end)
            if self.lost_answers.get("addPassword", 0) > 0:  # applied, but the answer never reaches the caller
                self.lost_answers["addPassword"] -= 1
                return 504, {"error": {"code": "GatewayTimeout", "message": "the gateway timed out"}}, {}
            return 200, created.as_graph(with_secret=True), {}
        if method == "POST" and action == "/removePassword":
            fault = self._fault("removePassword")
            if fault:
                return fault
            with self._lock:
                if self.passwords.pop(body["keyId"], None) is None:
                    return 400, {"error": {"code": "InvalidKeyId", "message": "no such password credential"}}, {}
            return 204, None, {}
        return 405, {"error": {"code": "MethodNotAllowed", "message": method}}, {}

    def _key_vault(self, method: str, path: str, body: Any) -> tuple[int, Any, dict]:
        parts = path.strip("/").split("/")  # secrets[/name[/versions]]
        if method == "GET" and parts == ["secrets"]:
            current = [{key: value for key, value in versions[-1].items() if key != "value"}
                       | {"id": f"{self.base_url}/secrets/{name}"} for name, versions in self.vault.items()]
            return 200, {"value": current, "nextLink": None}, {}
        if method == "PUT" and len(parts) == 2:
            fault = self._fault("setSecret")
            if fault and not self.write_lands_then_fails:
                return fault
            attributes = body.get("attributes") or {}
            self.store_secret(parts[1], body["value"], body.get("tags"), attributes.get("exp"))
            self.vault[parts[1]][-1]["contentType"] = body.get("contentType")
            return fault or (200, self.vault[parts[1]][-1], {})
        if method == "GET" and len(parts) == 3 and parts[2] == "versions":
            if parts[1] not in self.vault:
                return 404, {"error": {"code": "SecretNotFound", "message": f"no secret {parts[1]}"}}, {}
            listed = [{key: value for key, value in v.items() if key != "value"} for v in self.vault[parts[1]]]
            return 200, {"value": listed, "nextLink": None}, {}
        return 404, {"error": {"code": "NotFound", "message": path}}, {}

    def _authorization(self, path: str, odata_filter: str) -> tuple[int, Any, dict]:
        scope, _, rest = path.partition("/providers/Microsoft.Authorization/")
        if rest == "roleDefinitions":
            wanted = re.fullmatch(r"roleName eq '(.*)'", odata_filter)
            found = [guid for guid, name in self.role_definitions.items()
                     if not wanted or name == wanted.group(1).replace("''", "'")]
            return 200, {"value": [self._definition(guid) for guid in found]}, {}
        if rest.startswith("roleDefinitions/"):
            guid = rest.split("/", 1)[1]
            if guid not in self.role_definitions:
                return 404, {"error": {"code": "RoleDefinitionDoesNotExist", "message": guid}}, {}
            return 200, self._definition(guid), {}
        if rest == "roleAssignments":
            fault = self._fault("roleAssignments")
            if fault:
                return fault
            principal = re.fullmatch(r"principalId eq '(.*)'", odata_filter)
            scope = scope.lower()
            related = [a for a in self.role_assignments
                       if (not principal or a["principal"] == principal.group(1))
                       and (scope.startswith(a["scope"].lower()) or a["scope"].lower().startswith(scope))]
            return 200, {"value": [self._assignment(a) for a in related]}, {}
        return 404, {"error": {"code": "NotFound", "message": path}}, {}

    def _definition(self, guid: str) -> dict[str, Any]:
        return {"id": self.role_definition_id(guid), "name": guid, "type": "Microsoft.Authorization/roleDefinitions",
                "properties": {"roleName": self.role_definitions[guid], "type": "BuiltInRole", "permissions": []}}

    def _assignment(self, assignment: dict[str, str]) -> dict[str, Any]:
        name = str(uuid.uuid5(uuid.NAMESPACE_URL, assignment["scope"] + assignment["role_guid"]))
        return {
            "id": f"{assignment['scope']}/providers/Microsoft.Authorization/roleAssignments/{name}", "name": name,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {"scope": assignment["scope"], "principalId": assignment["principal"],
                           "principalType": "ServicePrincipal",
                           "roleDefinitionId": self.role_definition_id(assignment["role_guid"])},
        }


def _handler_for(fake: FakeAzure) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            split = urlsplit(self.path)
            query = {key: values[0] for key, values in parse_qs(split.query).items()}
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, document, headers = fake.handle(self.command, split.path, query, self.headers, body)
            payload = b"" if document is None else json.dumps(document).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures anyway
            pass

    return Handler


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _graph_time(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


NEVER = math.inf


# --- an environment pointing at the fake ---------------------------------------------------------
ENV_NAME = "rot"
PREFIX = "rotx"
SUBSCRIPTION_ID = "00000000-0000-4000-8000-00000000abcd"
RESOURCE_GROUP = f"rg-{PREFIX}-churn"
GROUP_ID = f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}"
WORKSPACE_ID = f"{GROUP_ID}/providers/Microsoft.MachineLearningServices/workspaces/mlw-{PREFIX}"
DATA_ACCOUNT_ID = f"{GROUP_ID}/providers/Microsoft.Storage/storageAccounts/st{PREFIX}data"
CONTAINER_ID = f"{DATA_ACCOUNT_ID}/blobServices/default/containers/churndata"
SECRET_NAME = "automation-client-secret"
ROLES = {
    "AzureML Data Scientist": "f6c7c914-8db3-469d-8ca1-694a8f32e121",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "Reader": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
}


def write_environment(directory: Path, fake: FakeAzure, **secret_policy: float) -> tuple[Path, Path]:
    """An environments file whose `rot` environment calls the fake, and its outputs file; returns both paths.

    The two configured role assignments are granted on the fake, so by default there is no drift.
    """
    policy = {"token_retry_seconds": 3, "overlap_hours": 24, "warn_days": 21, **secret_policy}
    config = directory / "environments.toml"
    config.write_text(
        f"""
[environments.{ENV_NAME}]
prefix = "{PREFIX}"
location = "westeurope"
subscription_id = "{SUBSCRIPTION_ID}"
role_assignments = [
  {{ role = "AzureML Data Scientist", scope = "ml_workspace" }},
  {{ role = "Storage Blob Data Contributor", scope = "data_container" }},
]

[environments.{ENV_NAME}.endpoints]
authority_host = "{fake.base_url}"
graph = "{fake.base_url}"
resource_manager = "{fake.base_url}"

[environments.{ENV_NAME}.secret]
"""
        + "".join(f"{key} = {value}\n" for key, value in policy.items())
    )
    values = {
        "subscription_id": SUBSCRIPTION_ID, "tenant_id": fake.tenant_id, "resource_group": RESOURCE_GROUP,
        "location": "westeurope", "ml_workspace_name": f"mlw-{PREFIX}", "mlflow_tracking_uri": "azureml://unused",
        "databricks_host": "https://adb-unused.azuredatabricks.net", "databricks_workspace_id": f"{GROUP_ID}/dbw",
        "key_vault_uri": fake.base_url + "/", "client_secret_name": SECRET_NAME,
        "automation_client_id": fake.client_id, "automation_application_object_id": fake.application_object_id,
        "data_account": f"st{PREFIX}data", "data_container": "churndata", "train_job_id": "1", "deploy_job_id": "2",
        "score_job_id": "3", "monitor_job_id": "4", "log_analytics_workspace_id": f"{GROUP_ID}/log",
        "alerts_action_group_id": f"{GROUP_ID}/ag",
    }
    outputs = directory / "outputs.json"
    outputs.write_text(json.dumps({f"churn-{ENV_NAME}": values}))

    fake.role_definitions.update({guid: name for name, guid in ROLES.items()})
    fake.role_assignments += [
        {"principal": fake.principal_id, "role_guid": ROLES["AzureML Data Scientist"], "scope": WORKSPACE_ID},
        {"principal": fake.principal_id, "role_guid": ROLES["Storage Blob Data Contributor"], "scope": CONTAINER_ID},
    ]
    return config, outputs


@contextlib.contextmanager
def signed_in(certificate: tuple[Path, Path], monkeypatch: Any) -> Iterator[FakeAzure]:
    """The fake Azure, with this process's azure-identity environment credential signed in as its admin."""
    with FakeAzure(*certificate, subscription_id=SUBSCRIPTION_ID) as service:
        monkeypatch.setenv("AZURE_TENANT_ID", service.tenant_id)
        monkeypatch.setenv("AZURE_CLIENT_ID", service.admin_client_id)
        monkeypatch.setenv("AZURE_CLIENT_SECRET", service.admin_secret)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
        monkeypatch.delenv("AZURE_TOKEN_CREDENTIALS", raising=False)
        monkeypatch.delenv("CHURN_CONFIG", raising=False)
        yield service
