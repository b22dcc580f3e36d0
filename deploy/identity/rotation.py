"""`rotate-secret`: give the automation identity a fresh client secret, with zero downtime.

The flow, in `rotate()`, step by step:

1. read_outputs   the application's object id, client id, tenant, Key Vault URI and secret name;
2. add_password   Graph `addPassword`; its display name carries the rotation time, its end date the
                  lifetime (default 90 days, at most 730). The secret text now lives only in memory;
3. verify_token   a token for Azure Resource Manager with the new secret (ClientSecretCredential),
                  retried with backoff up to `secret.token_retry_seconds` while Entra ID replicates;
4. role_drift     the identity's role assignments against the config (report only, see role_drift);
5. key_vault      the secret as a new Key Vault version: expires_on = the credential's end, a content
                  type, tags with the credential's key id and the rotation time;
6. prune          Graph `removePassword` for older credentials superseded more than
                  `secret.overlap_hours` ago (`--prune-now`: all older ones, `--keep-old`: none),
                  never the new one.

The invariant: the latest Key Vault version is always a secret that works.
- A failure at 3 or 5 removes the new credential again; Key Vault keeps (or is back at) the previous
  version, which still works. If a failed write may have landed after all, the vault is read back
  first: the new credential is removed only when the vault surely doesn't hold it.
- A failure at 6 leaves the new secret in place and working; the report names the old credentials
  that remain, and a re-run (or `--prune-now`) removes them.
- A failure at 4 (the check itself) doesn't stop the rotation; drift or a failed check makes the exit
  status non-zero after the secret is rotated.

An old credential counts as superseded from the moment a newer one exists (or it expires), so jobs
that read the previous secret keep working for `overlap_hours` after the rotation, not after that
secret's creation.

Permissions the caller needs (document them with the stack):
- Microsoft Graph `Application.ReadWrite.OwnedBy`, with the caller an owner of the automation
  application (the stack sets the deploying principal as owner): manage this application's
  credentials and no other's;
- `Key Vault Secrets Officer` on this environment's vault: write secret versions, read their metadata;
- for the drift report, read access to role assignments on the resource group (Reader gives it).

Secrecy: the secret text is never printed, logged, put in an exception message or in `--json`, and
never written anywhere but Key Vault. Error texts recorded in the report are scrubbed of it anyway.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from config import EnvConfig
from deploy.core.errors import DeployError, UsageError
from deploy.core.report import emit_json, heartbeat, progress
from deploy.platform import azure_auth
from deploy.platform.azure_auth import identity_options, scope
from deploy.platform.outputs import StackOutputs, load_outputs

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential
    from azure.keyvault.secrets import SecretClient, SecretProperties
    from azure.mgmt.authorization import AuthorizationManagementClient

    from deploy.identity.graph import GraphApplications, PasswordCredential

MAX_LIFETIME_DAYS = 730  # Entra ID's recommended ceiling for client secrets: two years
CONTENT_TYPE = "entra-client-secret"
TAG_KEY_ID = "key-id"
TAG_ROTATED_AT = "rotated-at"
TAG_CLIENT_ID = "client-id"
STEPS = ("read_outputs", "add_password", "verify_token", "role_drift", "key_vault", "prune")
FIRST_RETRY_SECONDS = 1.0
LONGEST_RETRY_SECONDS = 30.0

logger = logging.getLogger(__name__)


class Clients:
    """Every SDK client the rotation uses, built from the environment's endpoints (sovereign clouds).

    `connection_verify` is a CA bundle for TLS, for a private CA; left out, the system store (or
    `REQUESTS_CA_BUNDLE`) applies. `admin_credential` is the caller's own identity; left out, it is
    azure-identity's DefaultAzureCredential chain (pipeline login, `az login`, environment variables).
    """

    def __init__(
        self, env: EnvConfig, *, admin_credential: TokenCredential | None = None, connection_verify: str | None = None
    ):
        self.env = env
        self._admin = admin_credential
        self._connection_verify = connection_verify
        self._transport: dict[str, Any] = {"connection_verify": connection_verify} if connection_verify else {}
        self._identity = identity_options(env, connection_verify)

    def admin_credential(self) -> TokenCredential:
        if self._admin is None:
            self._admin = azure_auth.credential(self.env, self._connection_verify)
        return self._admin

    def app_credential(self, tenant_id: str, client_id: str, secret: str) -> TokenCredential:
        """A credential for the automation identity itself, from one of its client secrets."""
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(tenant_id, client_id, secret, **self._identity)

    def graph(self) -> GraphApplications:
        from deploy.identity.graph import GraphApplications

        return GraphApplications(self.env.cloud.graph, self.admin_credential(), **self._transport)

    def secrets(self, vault_url: str) -> SecretClient:
        from azure.keyvault.secrets import SecretClient

        verify = in_vault_domain(vault_url, self.env.cloud.key_vault_resource)
        return SecretClient(vault_url, self.admin_credential(), verify_challenge_resource=verify, **self._transport)

    def authorization(self, subscription_id: str) -> AuthorizationManagementClient:
        from azure.mgmt.authorization import AuthorizationManagementClient

        manager = self.env.cloud.resource_manager
        return AuthorizationManagementClient(
            self.admin_credential(), subscription_id, base_url=manager, credential_scopes=[scope(manager)],
            **self._transport,
        )


def in_vault_domain(vault_url: str, key_vault_resource: str) -> bool:
    """Is the vault under the cloud's vault domain (https://x.vault.azure.net under https://vault.azure.net)?

    SecretClient checks exactly this against the resource its auth challenge names; a vault outside
    the configured cloud's domain (an endpoint override) can't pass that check, so it is skipped there.
    """
    domain = urlparse(key_vault_resource).hostname or ""
    return bool(domain) and (urlparse(vault_url).hostname or "").endswith("." + domain)


@dataclass(frozen=True)
class Options:
    lifetime_days: int
    prune: str  # "overlap" (default), "now" (--prune-now) or "none" (--keep-old)
    dry_run: bool = False
    outputs_path: str | None = None


@dataclass
class Outcome:
    """What happened, step by step, and the state the environment is left in (the --json document)."""

    environment: str
    dry_run: bool
    steps: dict[str, dict[str, str]] = field(default_factory=lambda: {s: {"state": "pending"} for s in STEPS})
    application_object_id: str | None = None
    new_key_id: str | None = None
    expires: str | None = None
    removed_key_ids: list[str] = field(default_factory=list)
    remaining_old_key_ids: list[str] = field(default_factory=list)
    kept_until: dict[str, str] = field(default_factory=dict)  # old key id -> when it becomes removable
    role_drift: dict[str, Any] | None = None
    failed_step: str | None = None
    environment_state: str = "unchanged"
    _secret: str = field(default="", repr=False)

    def record(self, step: str, state: str, detail: str = "") -> None:
        self.steps[step] = {"state": state, **({"detail": self._scrub(detail)} if detail else {})}
        line = f"[{STEPS.index(step) + 1}/{len(STEPS)}] {step}: {state}"
        progress(line + (f" - {self._scrub(detail)}" if detail else ""))

    def fail(self, step: str, error: BaseException, environment_state: str) -> None:
        self.record(step, "failed", describe(error))
        self.failed_step = step
        self.environment_state = environment_state
        logger.info("step %s failed", step, exc_info=error)  # the traceback, shown with --debug

    def describe(self, error: BaseException) -> str:
        return self._scrub(describe(error))

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]") if self._secret else text

    @property
    def ok(self) -> bool:
        drift = self.role_drift or {"checked": True, "drift": False}  # None: not reached (dry run, or failed before)
        return self.failed_step is None and drift["checked"] and not drift["drift"]

    def as_dict(self) -> dict[str, Any]:
        document = {key: value for key, value in self.__dict__.items() if not key.startswith("_")}
        # a list, so the steps keep their order in JSON written with sorted keys
        document["steps"] = [{"step": step, **info} for step, info in self.steps.items()]
        return {"command": "rotate-secret", "ok": self.ok, **document}


def run(args: argparse.Namespace, env: EnvConfig) -> int:
    """The CLI handler: rotate (or plan), print the outcome, exit non-zero on any failure or drift."""
    if env.is_local:
        raise UsageError(f"environment '{env.name}' is local and has no automation identity; expected an Azure one")
    lifetime = args.lifetime_days if args.lifetime_days is not None else env.secret.lifetime_days
    if not 1 <= lifetime <= MAX_LIFETIME_DAYS:
        raise UsageError(f"--lifetime-days {lifetime} is out of range; expected 1 to {MAX_LIFETIME_DAYS} days")
    prune = "now" if args.prune_now else "none" if args.keep_old else "overlap"
    options = Options(lifetime_days=lifetime, prune=prune, dry_run=args.dry_run, outputs_path=args.outputs)
    clients = Clients(env)
    if args.if_due:  # the scheduled pipelines: rotate only a secret `status` warns about
        state = secret_status(env, load_outputs(env, args.outputs), clients)
        if state["error"]:
            raise DeployError(f"the client secret's state is unknown ({state['error']}); nothing rotated")
        if state["warning"] is None:
            if args.json:
                emit_json({"command": "rotate-secret", "ok": True, "rotated": False, "environment": env.name,
                           "secret": state})
            else:
                print(f"secret '{state['secret_name']}' expires in {state['secret_days_to_expiry']} days; not due")
            return 0
        progress(f"rotating: {state['warning']}")

    outcome = rotate(env, options, clients)

    if args.json:
        emit_json(outcome.as_dict())
    else:
        print(_summary(outcome), flush=True)
    if outcome.failed_step:
        raise DeployError(f"rotation failed at {outcome.failed_step}; {outcome.environment_state}")
    if not outcome.ok:
        raise DeployError(f"secret rotated, but the role check failed: {outcome.steps['role_drift'].get('detail')}")
    return 0


def rotate(env: EnvConfig, options: Options, clients: Clients) -> Outcome:
    """The rotation, top to bottom; every failure path leaves the latest Key Vault version working."""
    from deploy.identity import role_drift
    from deploy.identity.graph import PasswordCredential

    outcome = Outcome(environment=env.name, dry_run=options.dry_run)
    policy = env.secret
    overlap = timedelta(hours=policy.overlap_hours)

    # 1. read outputs: a missing or incomplete file is a UsageError, and nothing has changed.
    outputs = load_outputs(env, options.outputs_path)
    app = outputs.automation_application_object_id
    outcome.application_object_id = app
    outcome.record("read_outputs", "done", f"application {app}, vault {outputs.key_vault_uri}")
    graph = clients.graph()
    now = datetime.now(UTC)
    end = now + timedelta(days=options.lifetime_days)

    if options.dry_run:
        planned = PasswordCredential("(new)", f"rotated {_stamp(now)}", now, end)
        remove, keep = prune_plan(graph.password_credentials(app), planned, now, overlap, options.prune)
        outcome.expires = end.isoformat()
        outcome.record("add_password", "planned", f"new client secret valid until {_stamp(end)}")
        outcome.record("verify_token", "planned", f"wait up to {policy.token_retry_seconds:.0f}s for a token")
        outcome.record("role_drift", "planned", f"compare with {len(env.role_assignments)} configured assignments")
        outcome.record("key_vault", "planned", f"new version of '{outputs.client_secret_name}', expires {_stamp(end)}")
        outcome.record("prune", "planned", _prune_text(remove, keep, options.prune))
        outcome.remaining_old_key_ids = [c.key_id for c, _ in keep]
        outcome.kept_until = {c.key_id: when.isoformat() for c, when in keep if when}
        outcome.environment_state = "unchanged (dry run)"
        return outcome

    # 2. add a password credential; from here its text exists only in this process until Key Vault.
    try:
        new = graph.add_password(app, f"rotated {_stamp(now)} by rotate-secret", end)
    except Exception as error:
        outcome.fail(
            "add_password", error,
            "unchanged: no new credential was handed out; Key Vault still holds the secret in use",
        )
        return outcome
    outcome._secret = new.secret
    outcome.new_key_id = new.credential.key_id
    outcome.expires = new.credential.end.isoformat()
    outcome.record("add_password", "done", f"key id {new.credential.key_id}, valid until {_stamp(new.credential.end)}")

    # 3. prove it works, waiting out Entra ID's replication.
    app_credential = clients.app_credential(outputs.tenant_id, outputs.automation_client_id, new.secret)
    try:
        token = wait_for_token(app_credential, scope(env.cloud.resource_manager), policy.token_retry_seconds)
    except (Exception, KeyboardInterrupt) as error:
        undone = _remove_new(graph, app, new.credential.key_id, outcome)
        outcome.fail("verify_token", error, f"{undone}; Key Vault unchanged, its latest version still works")
        return outcome
    outcome.record("verify_token", "done", "the new secret gets a token")

    # 4. role drift: a report; a failed check must not keep a working secret out of Key Vault.
    try:
        drift = role_drift.check(clients.authorization(outputs.subscription_id), env, outputs, _object_id(token))
    except Exception as error:
        outcome.role_drift = {"checked": False, "drift": None, "error": outcome.describe(error)}
        outcome.record("role_drift", "failed", outcome.describe(error))
    else:
        outcome.role_drift = {"checked": True, "drift": bool(drift), **drift.as_dict()}
        outcome.record("role_drift", "drift" if drift else "done", drift.summary())

    # 5. store it as the vault's new latest version.
    vault = clients.secrets(outputs.key_vault_uri)
    try:
        vault.set_secret(
            outputs.client_secret_name, new.secret, expires_on=new.credential.end, content_type=CONTENT_TYPE,
            tags={TAG_KEY_ID: new.credential.key_id, TAG_ROTATED_AT: now.isoformat(),
                  TAG_CLIENT_ID: outputs.automation_client_id},
        )
    except (Exception, KeyboardInterrupt) as error:
        landed = _vault_key_id(vault, outputs.client_secret_name)
        if landed == new.credential.key_id:  # the write reached the vault though the answer was an error
            outcome.record("key_vault", "done", f"version written (the service reported: {outcome.describe(error)})")
        else:
            if landed is _UNKNOWN:
                undone = "the new credential was kept (the vault couldn't be read back, so it may hold it)"
            else:
                undone = _remove_new(graph, app, new.credential.key_id, outcome)
            outcome.fail("key_vault", error, f"{undone}; the previous Key Vault version is still the latest and works")
            return outcome
    else:
        outcome.record("key_vault", "done", f"new version of '{outputs.client_secret_name}'")

    # 6. prune older credentials past the overlap window; the new secret is in place whatever happens here.
    if options.prune == "none":
        outcome.record("prune", "skipped", "--keep-old: no old credential removed")
        outcome.environment_state = "rotated; old credentials kept (--keep-old)"
        outcome.remaining_old_key_ids = [c.key_id for c in _older(graph, app, new.credential)]
        return outcome
    try:
        remove, keep = prune_plan(graph.password_credentials(app), new.credential, now, overlap, options.prune)
    except Exception as error:
        outcome.fail("prune", error, "rotated: the new secret is in Key Vault and works; old credentials were not "
                     "listed or removed, a re-run removes them")
        return outcome
    outcome.kept_until = {c.key_id: when.isoformat() for c, when in keep if when}
    failures = []
    for old in remove:
        try:
            graph.remove_password(app, old.key_id)
            outcome.removed_key_ids.append(old.key_id)
        except Exception as error:
            failures.append((old.key_id, error))
    outcome.remaining_old_key_ids = [c.key_id for c, _ in keep] + [key for key, _ in failures]
    if failures:
        keys = ", ".join(key for key, _ in failures)
        outcome.fail("prune", failures[0][1], f"rotated: the new secret is in Key Vault and works; old credentials "
                     f"{keys} remain on the application; a re-run (or --prune-now) removes them")
        return outcome
    outcome.record("prune", "done", _prune_text(remove, keep, options.prune))
    outcome.environment_state = "rotated: the new secret is in Key Vault and works"
    return outcome


def prune_plan(
    existing: list[PasswordCredential], new: PasswordCredential, now: datetime, overlap: timedelta, mode: str
) -> tuple[list[PasswordCredential], list[tuple[PasswordCredential, datetime | None]]]:
    """Which credentials older than `new` to remove now, and which to keep (with when they become removable).

    An old credential stopped being the one in use when a newer one appeared or when it expired,
    whichever came first; it is removable `overlap` after that. `mode` "now" removes every older
    one, "none" none. Credentials newer than `new` (a concurrent rotation) are never touched.
    """
    older = [c for c in existing if c.key_id != new.key_id and c.start <= new.start]
    if mode == "none":
        return [], [(c, None) for c in older]
    remove, keep = [], []
    for credential in older:
        newer_starts = [c.start for c in existing if c.start > credential.start]
        superseded = min([credential.end, new.start, *newer_starts])
        removable_at = superseded + overlap
        if mode == "now" or removable_at <= now:
            remove.append(credential)
        else:
            keep.append((credential, removable_at))
    return remove, keep


def wait_for_token(credential: TokenCredential, resource_scope: str, bound_seconds: float) -> AccessToken:
    """A token from `credential`, retrying authentication failures with backoff for up to `bound_seconds`.

    A new secret can be refused for a while as Entra ID replicates it; HTTP-level retries (throttling,
    transient errors) happen inside azure-core's pipeline, not here.
    """
    from azure.core.exceptions import ClientAuthenticationError

    deadline = time.monotonic() + bound_seconds
    delay = FIRST_RETRY_SECONDS
    with heartbeat("waiting for the new secret to replicate"):
        while True:
            try:
                return credential.get_token(resource_scope)
            except ClientAuthenticationError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                logger.info("the new secret is not accepted yet; retrying in %.0fs", min(delay, remaining))
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, LONGEST_RETRY_SECONDS)


def secret_status(env: EnvConfig, outputs: StackOutputs, clients: Clients | None = None) -> dict[str, Any]:
    """The client secret's health, for `status`: a flat, JSON-serialisable dict with these keys.

    - `secret_name`: the Key Vault secret's name;
    - `secret_present`: whether the vault has a version of it;
    - `secret_expires_on`: the latest version's expiry (ISO 8601), or None;
    - `secret_days_to_expiry`: whole days until then (negative once expired), or None;
    - `secret_key_id`: the Graph key id the latest version is tagged with, or None;
    - `valid_password_credentials`: how many of the application's client secrets are valid now, or
      None when Graph couldn't be read;
    - `error`: what couldn't be read (Key Vault or Graph), or None;
    - `warning`: a sentence when the secret is missing, expired, has no expiry, expires within
      `env.secret.warn_days` days, or couldn't be read; otherwise None.
    """
    clients = clients or Clients(env)
    name = outputs.client_secret_name
    status: dict[str, Any] = {
        "secret_name": name, "secret_present": False, "secret_expires_on": None, "secret_days_to_expiry": None,
        "secret_key_id": None, "valid_password_credentials": None, "error": None, "warning": None,
    }
    errors = []
    latest = _latest_version(clients.secrets(outputs.key_vault_uri), name)
    if latest is _UNKNOWN:
        errors.append("Key Vault could not be read")
    elif latest is not None:
        status.update(secret_present=True, secret_key_id=(latest.tags or {}).get(TAG_KEY_ID))
        if latest.expires_on:
            days = (latest.expires_on - datetime.now(UTC)) / timedelta(days=1)
            status.update(secret_expires_on=latest.expires_on.isoformat(), secret_days_to_expiry=int(days // 1))
    try:
        now = datetime.now(UTC)
        credentials = clients.graph().password_credentials(outputs.automation_application_object_id)
        status["valid_password_credentials"] = sum(c.is_valid(now) for c in credentials)
    except Exception as error:
        errors.append(f"Graph could not be read ({describe(error)})")
    status["error"] = "; ".join(errors) or None
    status["warning"] = _status_warning(status, env.secret.warn_days)
    return status


def _status_warning(status: dict[str, Any], warn_days: int) -> str | None:
    name, days = status["secret_name"], status["secret_days_to_expiry"]
    if status["error"]:
        return f"secret state unknown: {status['error']}"
    if not status["secret_present"]:
        return f"Key Vault has no secret '{name}'; run rotate-secret to create it"
    if days is None:
        return f"secret '{name}' has no expiry date; run rotate-secret"
    if days < 0:
        return f"secret '{name}' has expired; run rotate-secret now"
    if days < warn_days:
        return f"secret '{name}' expires in {days} days (warning at {warn_days}); run rotate-secret"
    if not status["valid_password_credentials"]:
        return "the application has no valid client secret; run rotate-secret"
    return None


def describe(error: BaseException) -> str:
    """One line for an error: its type and its message's first line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


class _Unknown:
    """The vault couldn't be read: neither "absent" nor a version."""


_UNKNOWN: Any = _Unknown()


def _latest_version(vault: SecretClient, name: str) -> SecretProperties | None:
    """The current version's properties (never its value); None if the vault has no such secret.

    Listing the vault's secrets gives each one's current version without its value, so the
    secret text isn't fetched just to read its expiry and tags.
    """
    try:
        return next((item for item in vault.list_properties_of_secrets() if item.name == name), None)
    except Exception as error:
        logger.debug("reading the vault's secrets failed: %s", describe(error))
        return _UNKNOWN


def _vault_key_id(vault: SecretClient, name: str) -> Any:
    """The key id the vault's latest version is tagged with: a str, None, or _UNKNOWN."""
    latest = _latest_version(vault, name)
    return latest if latest is _UNKNOWN or latest is None else (latest.tags or {}).get(TAG_KEY_ID)


def _remove_new(graph: GraphApplications, app: str, key_id: str, outcome: Outcome) -> str:
    """Take back the credential this run created; returns what happened, for the environment state."""
    try:
        graph.remove_password(app, key_id)
    except Exception as error:
        outcome.steps["add_password"] = {"state": "done", "detail": f"key id {key_id}; removing it failed"}
        return (f"the new credential {key_id} could not be removed ({outcome.describe(error)}); it is unused, "
                "remove it or let the next rotation prune it")
    outcome.steps["add_password"] = {"state": "undone", "detail": f"key id {key_id} removed again"}
    outcome.new_key_id, outcome.expires = None, None
    return f"the new credential {key_id} was removed again"


def _older(graph: GraphApplications, app: str, new: PasswordCredential) -> list[PasswordCredential]:
    try:
        return [c for c in graph.password_credentials(app) if c.key_id != new.key_id and c.start <= new.start]
    except Exception as error:
        logger.debug("listing credentials failed: %s", describe(error))
        return []


def _object_id(token: AccessToken) -> str:
    """The service principal's object id: the `oid` claim of a token issued to it."""
    payload = token.token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["oid"]


def _prune_text(remove: list[PasswordCredential], keep: list[tuple[PasswordCredential, datetime | None]],
                mode: str) -> str:
    if mode == "none":
        return f"--keep-old: keep {len(keep)} old credential(s)"
    parts = [f"remove {c.key_id} ({c.display_name or 'unnamed'})" for c in remove]
    parts += [f"keep {c.key_id} until {_stamp(when)}" for c, when in keep if when]
    return "; ".join(parts) or "no older credentials"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _summary(outcome: Outcome) -> str:
    if outcome.dry_run:
        lines = [f"plan for environment '{outcome.environment}' (dry run, nothing changed):"]
        lines += [f"  {step}: {info.get('detail', '')}" for step, info in outcome.steps.items()]
        return "\n".join(lines)
    if outcome.failed_step:
        return f"rotation failed at {outcome.failed_step}: {outcome.environment_state}"
    removed = ", ".join(outcome.removed_key_ids) or "none"
    return (f"rotated: new credential {outcome.new_key_id} valid until {outcome.expires}; removed: {removed}; "
            f"role check: {outcome.steps['role_drift'].get('detail', '')}")
