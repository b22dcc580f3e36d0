"""The rotation flow, secret_status and role drift, with the real SDK clients against local HTTPS fakes.

Every test checks the state left behind on the fake: which password credentials the application
has, what the latest Key Vault version holds, and that this version authenticates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.identity import ClientSecretCredential

from config import EnvConfig, load_environment
from deploy.identity import role_drift
from deploy.identity.graph import PasswordCredential
from deploy.identity.rotation import (
    CONTENT_TYPE,
    Clients,
    Options,
    Outcome,
    in_vault_domain,
    prune_plan,
    rotate,
    secret_status,
)
from deploy.platform.outputs import load_outputs
from tests.fakes_azure import (
    CONTAINER_ID,
    ENV_NAME,
    GROUP_ID,
    NEVER,
    ROLES,
    SECRET_NAME,
    SUBSCRIPTION_ID,
    WORKSPACE_ID,
    FakeAzure,
    Password,
    write_environment,
)

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def fake(certificate: tuple[Path, Path]) -> Iterator[FakeAzure]:
    with FakeAzure(*certificate, subscription_id=SUBSCRIPTION_ID) as service:
        yield service


class World:
    """The fake plus an environment pointing at it, with a previous secret in use."""

    def __init__(self, fake: FakeAzure, directory: Path, cert: Path, **secret_policy: float):
        self.fake = fake
        self.config, self.outputs_file = write_environment(directory, fake, **secret_policy)
        self.env: EnvConfig = load_environment(ENV_NAME, self.config)
        self.cert = cert
        self.previous = fake.add_password("rotated earlier", NOW - dt.timedelta(days=60), NOW + dt.timedelta(days=30))
        fake.store_secret(SECRET_NAME, self.previous.secret, {"key-id": self.previous.key_id})

    def clients(self) -> Clients:
        admin = ClientSecretCredential(
            self.fake.tenant_id, self.fake.admin_client_id, self.fake.admin_secret, authority=self.fake.base_url,
            disable_instance_discovery=True, connection_verify=str(self.cert),
        )
        return Clients(self.env, admin_credential=admin, connection_verify=str(self.cert))

    def rotate(self, prune: str = "overlap", lifetime_days: int = 90, dry_run: bool = False) -> Outcome:
        options = Options(lifetime_days, prune, dry_run=dry_run, outputs_path=str(self.outputs_file))
        return rotate(self.env, options, self.clients())

    def key_ids(self) -> set[str]:
        return set(self.fake.passwords)

    def assert_latest_version_authenticates(self) -> dict:
        latest = self.fake.latest_secret(SECRET_NAME)
        assert latest is not None
        assert self.fake.accepts(self.fake.client_id, latest["value"])
        # ... and through the real SDK, as a Databricks job reading the vault would
        credential = self.clients().app_credential(self.fake.tenant_id, self.fake.client_id, latest["value"])
        assert credential.get_token(f"{self.fake.base_url}/.default").token
        return latest


@pytest.fixture
def world(fake: FakeAzure, tmp_path: Path, certificate: tuple[Path, Path]) -> World:
    return World(fake, tmp_path, certificate[0])


def old_password(fake: FakeAzure, started_days_ago: float, lifetime_days: float = 365) -> Password:
    start = NOW - dt.timedelta(days=started_days_ago)
    return fake.add_password(f"started {started_days_ago}d ago", start, start + dt.timedelta(days=lifetime_days))


# --- the whole flow ---------------------------------------------------------------------------------


def test_an_add_password_whose_answer_was_lost_is_reconciled_not_repeated_blindly(world: World) -> None:
    # Graph created the credential but the caller saw 504: its secret is lost. azure-core would retry the POST
    # and leave an orphan; the rotation removes the orphan by its display name, then adds one it can use.
    world.fake.lost_answers["addPassword"] = 1
    outcome = world.rotate()

    assert outcome.ok and outcome.steps["add_password"]["state"] == "done"
    adds = [path for method, path in world.fake.requests if method == "POST" and path.endswith("/addPassword")]
    removes = [path for method, path in world.fake.requests if method == "POST" and path.endswith("/removePassword")]
    assert len(adds) == 2 and len(removes) == 1  # one lost, one kept; the lost one removed, nothing else
    assert world.key_ids() == {world.previous.key_id, outcome.new_key_id}  # no orphan credential remains
    assert world.assert_latest_version_authenticates()["value"] == world.fake.passwords[outcome.new_key_id].secret


def test_rotation_stores_a_working_secret_and_keeps_the_previous_one_through_the_overlap(world: World) -> None:
    now = dt.datetime.now(dt.UTC)  # not the module's NOW: the suite runs for minutes before this test
    outcome = world.rotate()

    assert outcome.ok and outcome.failed_step is None
    assert {step: info["state"] for step, info in outcome.steps.items()} == {
        "read_outputs": "done", "add_password": "done", "verify_token": "done",
        "role_drift": "done", "key_vault": "done", "prune": "done",
    }
    new = world.fake.passwords[outcome.new_key_id]
    assert world.key_ids() == {world.previous.key_id, new.key_id}  # the previous secret still works for a day
    assert "rotated" in new.display_name and now.strftime("%Y-%m-%d") in new.display_name
    assert abs(new.end - (now + dt.timedelta(days=90))) < dt.timedelta(minutes=5)

    latest = world.assert_latest_version_authenticates()
    assert latest["value"] == new.secret
    assert latest["contentType"] == CONTENT_TYPE
    assert latest["tags"]["key-id"] == new.key_id and latest["tags"]["rotated-at"].startswith(now.strftime("%Y-%m-%d"))
    assert latest["attributes"]["exp"] == int(new.end.timestamp())
    assert len(world.fake.vault[SECRET_NAME]) == 2  # a new version, the previous one kept
    assert outcome.removed_key_ids == [] and outcome.remaining_old_key_ids == [world.previous.key_id]
    kept_until = dt.datetime.fromisoformat(outcome.kept_until[world.previous.key_id])
    assert abs(kept_until - (now + dt.timedelta(hours=24))) < dt.timedelta(minutes=5)
    assert outcome.role_drift == {
        "checked": True, "drift": False, "principal_id": world.fake.principal_id, "missing": [], "unexpected": []
    }


def test_overlap_window_removes_only_credentials_superseded_long_enough_ago(world: World) -> None:
    superseded_two_days_ago = old_password(world.fake, started_days_ago=100)
    newer_two_days_ago = old_password(world.fake, started_days_ago=2)  # superseded the one above 2 days ago
    expired = old_password(world.fake, started_days_ago=400, lifetime_days=365)  # ended 35 days ago
    # world.previous (60 days old) was superseded by newer_two_days_ago too: it goes as well

    outcome = world.rotate()

    assert outcome.ok
    assert set(outcome.removed_key_ids) == {superseded_two_days_ago.key_id, expired.key_id, world.previous.key_id}
    assert world.key_ids() == {newer_two_days_ago.key_id, outcome.new_key_id}
    assert outcome.remaining_old_key_ids == [newer_two_days_ago.key_id]
    world.assert_latest_version_authenticates()


def test_prune_now_removes_every_older_credential_but_the_new_one(world: World) -> None:
    old_password(world.fake, started_days_ago=2)

    outcome = world.rotate(prune="now")

    assert outcome.ok and len(outcome.removed_key_ids) == 2
    assert world.key_ids() == {outcome.new_key_id}
    world.assert_latest_version_authenticates()


def test_keep_old_removes_nothing(world: World) -> None:
    stale = old_password(world.fake, started_days_ago=300, lifetime_days=100)  # long expired

    outcome = world.rotate(prune="none")

    assert outcome.ok and outcome.steps["prune"]["state"] == "skipped"
    assert world.key_ids() == {world.previous.key_id, stale.key_id, outcome.new_key_id}
    assert set(outcome.remaining_old_key_ids) == {world.previous.key_id, stale.key_id}
    assert not any(path.endswith("/removePassword") for _, path in world.fake.requests)


def test_dry_run_plans_and_changes_nothing(world: World) -> None:
    due = old_password(world.fake, started_days_ago=100)
    old_password(world.fake, started_days_ago=3)  # superseded `due` 3 days ago
    before = world.key_ids()

    outcome = world.rotate(dry_run=True)

    assert world.fake.writes() == []
    assert world.key_ids() == before and len(world.fake.vault[SECRET_NAME]) == 1
    assert all(info["state"] == "planned" for step, info in outcome.steps.items() if step != "read_outputs")
    assert f"remove {due.key_id}" in outcome.steps["prune"]["detail"]
    assert outcome.new_key_id is None and outcome.environment_state.startswith("unchanged")
    world.assert_latest_version_authenticates()


def test_replication_delay_is_waited_out(world: World) -> None:
    world.fake.replication_delay = 0.5

    outcome = world.rotate()

    assert outcome.ok
    attempts = [accepted for client, accepted in world.fake.token_attempts if client == world.fake.client_id]
    assert attempts[0] is False and attempts[-1] is True  # refused while replicating, then accepted
    assert world.assert_latest_version_authenticates()["tags"]["key-id"] == outcome.new_key_id


def test_graph_throttling_is_retried_by_the_azure_core_policy(world: World) -> None:
    calls = {"n": 0}
    original = world.fake._graph

    def throttle_once(method, path, body):
        if path.endswith("/addPassword") and calls["n"] == 0:
            calls["n"] += 1
            return 429, {"error": {"code": "TooManyRequests", "message": "slow down"}}, {"Retry-After": "0"}
        return original(method, path, body)

    world.fake._graph = throttle_once

    outcome = world.rotate()

    assert outcome.ok and calls["n"] == 1
    assert sum(path.endswith("/addPassword") for _, path in world.fake.requests) == 2


# --- a fault at each step ---------------------------------------------------------------------------


def test_add_password_failure_changes_nothing(world: World) -> None:
    world.fake.faults["addPassword"] = 403

    outcome = world.rotate()

    assert outcome.failed_step == "add_password" and not outcome.ok
    assert "(InjectedFault) addPassword refused by the test" in outcome.steps["add_password"]["detail"]
    assert world.key_ids() == {world.previous.key_id}
    assert world.assert_latest_version_authenticates()["value"] == world.previous.secret
    assert outcome.environment_state.startswith("unchanged")


def test_secret_that_never_authenticates_is_removed_and_key_vault_untouched(
    fake: FakeAzure, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    world = World(fake, tmp_path, certificate[0], token_retry_seconds=1)
    fake.replication_delay = NEVER

    outcome = world.rotate()

    assert outcome.failed_step == "verify_token"
    assert outcome.steps["add_password"]["state"] == "undone"
    assert outcome.steps["key_vault"]["state"] == "pending" and outcome.steps["prune"]["state"] == "pending"
    assert world.key_ids() == {world.previous.key_id}
    assert len(fake.vault[SECRET_NAME]) == 1
    assert world.assert_latest_version_authenticates()["value"] == world.previous.secret
    assert "removed again" in outcome.environment_state and "Key Vault unchanged" in outcome.environment_state


def test_key_vault_write_failure_removes_the_new_credential(world: World) -> None:
    world.fake.faults["setSecret"] = 403

    outcome = world.rotate()

    assert outcome.failed_step == "key_vault"
    assert outcome.new_key_id is None and outcome.steps["add_password"]["state"] == "undone"
    assert world.key_ids() == {world.previous.key_id}
    assert world.assert_latest_version_authenticates()["value"] == world.previous.secret
    assert "previous Key Vault version is still the latest" in outcome.environment_state


def test_key_vault_write_that_landed_despite_an_error_keeps_the_new_credential(world: World) -> None:
    world.fake.faults["setSecret"] = 403
    world.fake.write_lands_then_fails = True

    outcome = world.rotate()

    assert outcome.failed_step is None and outcome.steps["key_vault"]["state"] == "done"
    assert outcome.new_key_id in world.key_ids()
    assert world.assert_latest_version_authenticates()["tags"]["key-id"] == outcome.new_key_id


def test_remove_password_failure_leaves_the_new_secret_in_place_and_a_rerun_finishes(world: World) -> None:
    due = old_password(world.fake, started_days_ago=100)
    old_password(world.fake, started_days_ago=2)  # supersedes `due` and world.previous two days ago
    world.fake.faults["removePassword"] = 403

    first = world.rotate()

    assert first.failed_step == "prune" and first.removed_key_ids == []
    assert {due.key_id, world.previous.key_id} <= set(first.remaining_old_key_ids)
    assert f"{due.key_id}" in first.environment_state and "re-run" in first.environment_state
    assert world.assert_latest_version_authenticates()["tags"]["key-id"] == first.new_key_id

    del world.fake.faults["removePassword"]
    second = world.rotate()

    assert second.ok and {due.key_id, world.previous.key_id} <= set(second.removed_key_ids)
    assert due.key_id not in world.key_ids() and world.previous.key_id not in world.key_ids()
    assert first.new_key_id in world.key_ids()  # superseded just now: kept through the overlap
    assert world.assert_latest_version_authenticates()["tags"]["key-id"] == second.new_key_id


def test_role_check_failure_does_not_stop_the_rotation(world: World) -> None:
    world.fake.faults["roleAssignments"] = 403

    outcome = world.rotate()

    assert outcome.failed_step is None and not outcome.ok
    assert outcome.steps["role_drift"]["state"] == "failed" and outcome.role_drift["checked"] is False
    assert "InjectedFault" in outcome.role_drift["error"]
    assert world.assert_latest_version_authenticates()["tags"]["key-id"] == outcome.new_key_id


# --- role drift ----------------------------------------------------------------------------------------


def test_role_drift_reports_missing_and_unexpected_assignments_at_the_environment_scopes(world: World) -> None:
    fake = world.fake
    fake.role_assignments[:] = [
        {"principal": fake.principal_id, "role_guid": ROLES["AzureML Data Scientist"], "scope": WORKSPACE_ID},
        {"principal": fake.principal_id, "role_guid": ROLES["Contributor"], "scope": GROUP_ID},
        # inherited from above the resource group: it reaches the environment, so it is drift too
        {"principal": fake.principal_id, "role_guid": ROLES["Reader"], "scope": f"/subscriptions/{SUBSCRIPTION_ID}"},
        # someone else's: not this identity's drift
        {"principal": "someone-else", "role_guid": ROLES["Contributor"], "scope": CONTAINER_ID},
    ]

    outcome = world.rotate()

    assert outcome.steps["role_drift"]["state"] == "drift" and not outcome.ok
    assert outcome.role_drift["missing"] == [{"role": "Storage Blob Data Contributor", "scope": CONTAINER_ID}]
    assert sorted(outcome.role_drift["unexpected"], key=lambda a: a["role"]) == [
        {"role": "Contributor", "scope": GROUP_ID},
        {"role": "Reader", "scope": f"/subscriptions/{SUBSCRIPTION_ID}"},
    ]
    assert world.assert_latest_version_authenticates()["tags"]["key-id"] == outcome.new_key_id


def test_role_drift_maps_every_symbolic_scope_to_its_resource_id(world: World) -> None:
    scopes = role_drift.scope_ids(world.env, load_outputs(world.env, world.outputs_file))

    assert scopes["resource_group"] == GROUP_ID
    assert scopes["ml_workspace"] == WORKSPACE_ID
    assert scopes["data_container"] == CONTAINER_ID
    assert scopes["key_vault"] == f"{GROUP_ID}/providers/Microsoft.KeyVault/vaults/kv-rotx-ops"


# --- prune_plan on its own ----------------------------------------------------------------------------


def credential(key: str, start_days_ago: float, end_days_ahead: float = 300) -> PasswordCredential:
    start, end = NOW - dt.timedelta(days=start_days_ago), NOW + dt.timedelta(days=end_days_ahead)
    return PasswordCredential(key, key, start, end)


def test_prune_plan_never_touches_the_new_credential_or_newer_ones() -> None:
    new = credential("new", 0)
    concurrent = PasswordCredential("concurrent", "", NOW + dt.timedelta(seconds=5), NOW + dt.timedelta(days=90))
    old = credential("old", 50)

    remove, keep = prune_plan([old, new, concurrent], new, NOW, dt.timedelta(hours=0), "now")

    assert remove == [old] and keep == []
    remove, keep = prune_plan([old, new], new, NOW, dt.timedelta(hours=24), "overlap")
    assert remove == [] and keep == [(old, new.start + dt.timedelta(hours=24))]


# --- secret_status -------------------------------------------------------------------------------------


def test_secret_status_after_a_rotation(world: World) -> None:
    world.rotate()

    status = secret_status(world.env, load_outputs(world.env, world.outputs_file), world.clients())

    assert status["secret_present"] is True and status["secret_days_to_expiry"] == 89
    assert status["valid_password_credentials"] == 2 and status["warning"] is None and status["error"] is None
    assert status["secret_key_id"] in world.key_ids()
    assert set(status) == {"secret_name", "secret_present", "secret_expires_on", "secret_days_to_expiry",
                           "secret_key_id", "valid_password_credentials", "error", "warning"}


def test_secret_status_warns_when_the_secret_expires_soon(world: World) -> None:
    world.rotate(lifetime_days=10)

    status = secret_status(world.env, load_outputs(world.env, world.outputs_file), world.clients())

    assert status["secret_days_to_expiry"] == 9
    assert "expires in 9 days" in status["warning"] and "rotate-secret" in status["warning"]


def test_secret_status_warns_when_the_secret_is_missing(world: World) -> None:
    world.fake.vault.clear()

    status = secret_status(world.env, load_outputs(world.env, world.outputs_file), world.clients())

    assert status["secret_present"] is False and status["secret_days_to_expiry"] is None
    assert "no secret 'automation-client-secret'" in status["warning"]
    assert status["valid_password_credentials"] == 1


def test_secret_status_reports_what_it_could_not_read(world: World) -> None:
    world.fake.faults["listPasswords"] = 403

    status = secret_status(world.env, load_outputs(world.env, world.outputs_file), world.clients())

    assert status["valid_password_credentials"] is None and "Graph could not be read" in status["error"]
    assert status["warning"].startswith("secret state unknown")


# --- sovereign clouds ----------------------------------------------------------------------------------


def test_clients_take_every_endpoint_from_the_cloud_config(write_config) -> None:
    config = write_config(
        '[environments.gov]\nprefix = "govx"\nlocation = "usgovvirginia"\ncloud = "AzureUSGovernment"\n'
    )
    env = load_environment("gov", config)
    clients = Clients(env, admin_credential=ClientSecretCredential("t", "c", "s"))

    assert clients.graph()._base_url == "https://graph.microsoft.us/v1.0"
    assert clients.authorization(SUBSCRIPTION_ID)._client._base_url == "https://management.usgovcloudapi.net"
    # a Microsoft authority keeps MSAL's instance discovery; the local fake's authority (above) turns it off
    assert clients._identity["authority"] == "https://login.microsoftonline.us"
    assert clients._identity["disable_instance_discovery"] is False
    assert in_vault_domain("https://kv-govx-ops.vault.usgovcloudapi.net/", env.cloud.key_vault_resource)
    assert not in_vault_domain("https://kv-govx-ops.vault.azure.net/", env.cloud.key_vault_resource)
    assert not in_vault_domain("https://127.0.0.1:8443/", env.cloud.key_vault_resource)
