"""The Azure ML target driven by the real release flow, against autospecs of the azure-ai-ml operation classes.

The MLflow side is a real MLflow server standing in for the workspace's MLflow API, refusing what
Azure ML does not support (tests/release_doubles.AzureMLRegistry: no aliases, no registered-model
tags, no status filters). The online endpoint and deployment operations are
`create_autospec(..., instance=True)` of the SDK's own classes, so every call is checked against
the real signatures, with a small in-memory workspace (tests/rollout_fixtures.FakeWorkspace)
behind them. Invocations are scored with the model version the deployment serves. The slot locks
live in a local folder (on Azure: leases in the data container, tested in tests/test_locks.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from config import EnvConfig, load_environment
from deploy.core.errors import Refused
from deploy.platform import locks, tracking
from deploy.release import registry
from deploy.release.rollout import release, rollback
from deploy.release.targets.azureml import AzureMLTarget, predictions_of, version_of
from deploy.status import collect
from tests.release_doubles import AzureMLRegistry
from tests.rollout_fixtures import FakeWorkspace, log_build, offline, stack_outputs


@pytest.fixture
def azure(local_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    local = load_environment("local", local_config)
    dev = load_environment("dev", local_config)
    monkeypatch.setattr(tracking, "environment_locks", lambda *_, **__: locks.Locks(str(tmp_path / "churndata")))
    with FakeWorkspace(offline) as workspace:
        world = _world(local, dev, workspace, tmp_path)
        yield world
        world.registry.close()


def _world(local: EnvConfig, dev: EnvConfig, workspace: FakeWorkspace, tmp_path: Path) -> SimpleNamespace:
    for build, seed in (("A", 1), ("B", 2), ("C", 3)):
        log_build(local, build, seed=seed)  # as training leaves them, in the store the stand-in serves
    standin = AzureMLRegistry(tracking.tracking_uri(local, None), tmp_path / "artifacts")
    world = SimpleNamespace(
        local=local, env=dev, workspace=workspace, target=AzureMLTarget(dev, workspace), registry=standin,
        outputs=stack_outputs(dev, standin.uri), stage=dev.endpoint_name("stage"), prod=dev.endpoint_name("prod"),
    )
    tracking.use_environment(dev, world.outputs)
    return world


def ship(world: SimpleNamespace, build: str, slot: str = "stage", **options: Any) -> Any:
    return release(world.env, slot, build, outputs=world.outputs, target=world.target, **options)


def endpoint_updates(world: SimpleNamespace) -> int:
    return world.workspace.online_endpoints.begin_create_or_update.call_count


def test_first_release_creates_the_endpoint_deploys_beside_it_with_zero_traffic_then_switches(azure) -> None:
    result = ship(azure, "A")

    endpoint = azure.workspace.online_endpoints.begin_create_or_update.call_args_list[0].args[0]
    assert (endpoint.name, endpoint.auth_mode) == (azure.stage, "aml_token")
    assert endpoint.tags["environment"] == "dev" and endpoint.tags["slot"] == "stage"
    deployment = azure.workspace.online_deployments.begin_create_or_update.call_args.args[0]
    assert (deployment.name, deployment.endpoint_name) == ("churn-v1", azure.stage)
    assert deployment.model == "azureml:churn-model:1"
    assert (deployment.instance_type, deployment.instance_count) == (
        azure.env.serving.instance_type, azure.env.serving.instance_count
    )
    assert deployment.code_configuration is None and deployment.environment is None  # MLflow no-code

    scored = azure.workspace.scored
    # One warm-up, one request per row, then one through the endpoint's URL without a deployment header.
    assert len(scored) == azure.env.validation.rows + 2
    assert set(scored) == {(azure.stage, "churn-v1")}
    azure.workspace.online_endpoints.invoke.assert_not_called()  # its management calls would skew latency
    azure.workspace.online_endpoints.get_keys.assert_called_once_with(azure.stage)  # the token, fetched once
    assert all(traffic.get("churn-v1", 0) == 0 for traffic in azure.workspace.traffic_at_invoke[:-1])
    assert azure.workspace.traffic_at_invoke[-1] == {"churn-v1": 100}  # the public check came after the switch

    assert azure.workspace.traffic(azure.stage) == {"churn-v1": 100}
    assert result.url == azure.workspace.endpoints[azure.stage].scoring_uri
    assert (result.version, result.previous, result.validation["mismatches"]) == ("1", None, 0)
    assert registry.version_tags("1")["validated.stage"] == "true"
    # The stand-in has no aliases, as Azure ML has none: the release finished anyway, after the switch.
    assert any("registered-models/alias" in refusal for refusal in azure.registry.refused)


def test_blue_green_keeps_the_previous_deployment_and_deletes_older_ones(azure) -> None:
    ship(azure, "A")
    ship(azure, "B")
    assert azure.workspace.traffic_at_invoke[-2] == {"churn-v1": 100}  # v2 was validated beside v1, without traffic
    assert azure.workspace.scored[-1] == (azure.stage, "churn-v2")  # then checked through the URL, after the switch
    assert azure.workspace.traffic(azure.stage) == {"churn-v1": 0, "churn-v2": 100}

    third = ship(azure, "C")
    assert third.previous == "churn-v2"
    assert azure.workspace.names(azure.stage) == ["churn-v2", "churn-v3"]
    assert azure.workspace.traffic(azure.stage) == {"churn-v2": 0, "churn-v3": 100}
    azure.workspace.online_deployments.begin_delete.assert_called_once_with(name="churn-v1", endpoint_name=azure.stage)
    assert azure.workspace.endpoints[azure.stage].tags["previous-deployment"] == "churn-v2"


@pytest.mark.parametrize(("fault", "reason"), [("wrong", "differ from the offline predictions"), ("broken", "timeout")])
def test_failed_validation_deletes_the_new_deployment_and_leaves_traffic_untouched(azure, fault, reason) -> None:
    ship(azure, "A")
    updates = endpoint_updates(azure)
    getattr(azure.workspace, fault).add("churn-v2")
    with pytest.raises(Refused, match=reason):
        ship(azure, "B")
    assert azure.workspace.names(azure.stage) == ["churn-v1"]
    assert azure.workspace.traffic(azure.stage) == {"churn-v1": 100}
    assert endpoint_updates(azure) == updates  # the endpoint (its traffic) was never written
    assert azure.target.describe("stage").serving.version == "1"
    assert registry.last_validation("stage")["passed"] is False


def test_one_scoring_connection_serves_the_whole_validation(azure) -> None:
    ship(azure, "A")
    # 50 rows, a warm-up and the public check went through one kept-alive connection: p95 is the model's.
    assert len(azure.workspace.scored) == azure.env.validation.rows + 2
    assert azure.workspace.connections == 1


def test_a_deployment_left_failed_by_an_earlier_attempt_is_deleted_and_created_again(azure) -> None:
    from azure.ai.ml.entities import ManagedOnlineDeployment

    ship(azure, "A")
    version = registry.register(registry.find_run("B"))
    azure.workspace.deployments[azure.stage]["churn-v2"] = ManagedOnlineDeployment(  # a crashed release's leftover
        name="churn-v2", endpoint_name=azure.stage, model=f"azureml:churn-model:{version}", tags={},
        provisioning_state="Failed",
    )
    resumed = ship(azure, "B")
    assert (resumed.version, resumed.validation["passed"]) == (version, True)
    azure.workspace.online_deployments.begin_delete.assert_any_call(name="churn-v2", endpoint_name=azure.stage)
    assert azure.workspace.deployments[azure.stage]["churn-v2"].provisioning_state == "Succeeded"
    assert azure.workspace.traffic(azure.stage) == {"churn-v1": 0, "churn-v2": 100}


def test_failed_provisioning_deletes_the_new_deployment_and_leaves_traffic_untouched(azure) -> None:
    ship(azure, "A")
    azure.workspace.failing.add("churn-v2")
    with pytest.raises(HttpResponseError, match="quota"):
        ship(azure, "B")
    assert azure.workspace.names(azure.stage) == ["churn-v1"]
    assert azure.workspace.traffic(azure.stage) == {"churn-v1": 100}


def test_rollback_moves_traffic_and_alias_back_once_and_a_repeat_changes_nothing(azure) -> None:
    ship(azure, "A")
    ship(azure, "B")
    back = rollback(azure.env, "stage", outputs=azure.outputs, target=azure.target)
    assert (back.deployment, back.version, back.rolled_back_from) == ("churn-v1", "1", "churn-v2")
    assert azure.workspace.traffic(azure.stage) == {"churn-v1": 100}, "the rolled-back deployment is deleted"
    assert azure.workspace.endpoints[azure.stage].tags["previous-deployment"] == ""
    assert azure.target.describe("stage").serving.version == "1"
    assert registry.version_tags("2")["validated.stage"] == "rolled-back"

    # A retried rollback must not bring version 2 back.
    updates = endpoint_updates(azure)
    with pytest.raises(Refused, match="no previous deployment to roll back to"):
        rollback(azure.env, "stage", outputs=azure.outputs, target=azure.target)
    assert endpoint_updates(azure) == updates and azure.target.describe("stage").serving.version == "1"


def test_rollback_without_a_previous_deployment_changes_nothing(azure) -> None:
    with pytest.raises(Refused, match="serves nothing"):
        rollback(azure.env, "prod", outputs=azure.outputs, target=azure.target)
    ship(azure, "A")
    updates = endpoint_updates(azure)
    with pytest.raises(Refused, match="no previous deployment to roll back to"):
        rollback(azure.env, "stage", outputs=azure.outputs, target=azure.target)
    assert endpoint_updates(azure) == updates
    assert azure.workspace.traffic(azure.stage) == {"churn-v1": 100}


def test_rerunning_a_release_converges(azure) -> None:
    ship(azure, "A")
    again = ship(azure, "A")
    assert again.already_serving and again.validation is None
    assert azure.workspace.online_deployments.begin_create_or_update.call_count == 1

    # A release of B interrupted after its deployment was provisioned, before validation.
    version = registry.register(registry.find_run("B"))
    azure.target.create_deployment("stage", "churn-v2", version)
    creates = azure.workspace.online_deployments.begin_create_or_update.call_count
    resumed = ship(azure, "B")
    assert azure.workspace.online_deployments.begin_create_or_update.call_count == creates  # reused, not re-created
    assert (resumed.version, resumed.previous, resumed.validation["passed"]) == (version, "churn-v1", True)
    assert azure.workspace.traffic(azure.stage) == {"churn-v1": 0, "churn-v2": 100}


def test_prod_takes_only_stage_validated_versions_unless_forced(azure) -> None:
    with pytest.raises(Refused, match="has not passed stage validation"):
        ship(azure, "A", "prod")
    assert azure.prod not in azure.workspace.endpoints

    ship(azure, "A")
    promoted = ship(azure, "A", "prod")
    assert promoted.overrides == () and azure.workspace.traffic(azure.prod) == {"churn-v1": 100}

    forced = ship(azure, "B", "prod", force=True)
    assert forced.overrides == ("stage-validation",)
    assert registry.version_tags(forced.version)["forced.prod"] == "stage-validation"
    assert azure.target.describe("prod").serving.version == forced.version


def test_status_shows_both_slots_and_the_secret(azure, monkeypatch: pytest.MonkeyPatch) -> None:
    import deploy.identity.rotation

    seen = {}

    def secret_status(env: Any, outputs: Any) -> dict[str, Any]:  # the rotation module's own tests cover it
        seen.update(env=env, outputs=outputs)
        return {"name": env.secret.name, "days_left": 80}

    monkeypatch.setattr(deploy.identity.rotation, "secret_status", secret_status)
    ship(azure, "A")
    document = collect(azure.env, outputs=azure.outputs, target=azure.target)
    stage, prod = document["slots"]["stage"], document["slots"]["prod"]
    assert stage["serving"] == {"deployment": "churn-v1", "version": "1", "build": "A", "state": "Succeeded"}
    assert (stage["state"], stage["traffic"], stage["endpoint"]) == ("Succeeded", {"churn-v1": 100}, azure.stage)
    assert stage["last_validation"]["passed"] is True
    assert (prod["state"], prod["serving"], prod["url"]) == ("Absent", None, None)
    assert document["secret"] == {"name": azure.env.secret.name, "days_left": 80}
    assert seen == {"env": azure.env, "outputs": azure.outputs}


def test_the_version_of_a_deployment_comes_from_its_tag_or_its_model_reference() -> None:
    from azure.ai.ml.entities import ManagedOnlineDeployment

    def deployment(**fields: Any) -> ManagedOnlineDeployment:
        return ManagedOnlineDeployment(name="churn-v9", endpoint_name="e", **fields)

    assert version_of(deployment(model="azureml:churn-model:7")) == "7"
    assert version_of(deployment(model="/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices"
                                       "/workspaces/w/models/churn-model/versions/12")) == "12"
    assert version_of(deployment(model="azureml:churn-model:7", tags={"model-version": "8"})) == "8"
    assert version_of(deployment(model="azureml:other-model:7")) is None


def test_scoring_answers_in_either_mlflow_shape_are_read() -> None:
    assert predictions_of("[0, 1]") == [0, 1]
    assert predictions_of('{"predictions": [1]}') == [1]
    assert predictions_of('"[1, 0]"') == [1, 0]
    with pytest.raises(Exception, match="expected a JSON list"):
        predictions_of('{"error": "bad"}')


def test_the_target_builds_its_client_from_the_stack_outputs(azure) -> None:
    from azure.ai.ml.operations import OnlineDeploymentOperations, OnlineEndpointOperations

    client = AzureMLTarget.from_outputs(azure.env, azure.outputs).client  # no call leaves the machine
    assert (client.subscription_id, client.resource_group_name, client.workspace_name) == (
        azure.outputs.subscription_id, azure.outputs.resource_group, azure.outputs.ml_workspace_name
    )
    # The very classes the fake workspace autospecs are what the real client hands out.
    assert isinstance(client.online_endpoints, OnlineEndpointOperations)
    assert isinstance(client.online_deployments, OnlineDeploymentOperations)
