"""The Databricks notebooks, run locally cell by cell with the dbutils stand-in, and what they do before training."""

from __future__ import annotations

import ast
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from azure.identity import ClientSecretCredential

from config import load_environment
from deploy import notebook_runtime
from deploy.core import contract
from deploy.core.errors import Refused, UsageError
from deploy.platform import tracking
from deploy.platform.outputs import OUTPUT_NAMES, StackOutputs
from deploy.training import synthetic

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {
    "train_churn": ("env", "buildNumber", "buildSource", "force"),
    "deploy_churn": ("env", "buildNumber", "deployType"),
    "monitor_churn": ("env", "slot", "window"),
    "score_churn": ("env", "slot", "version", "scoringDate", "input"),
}


def cells(name: str) -> list[str]:
    source = (notebook_runtime.NOTEBOOKS_DIR / f"{name}.py").read_text()
    assert source.splitlines()[0] == notebook_runtime.NOTEBOOK_HEADER
    return source.split(notebook_runtime.CELL_SEPARATOR)


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "churn.csv"
    synthetic.generate(2_000).to_csv(path, index=False)
    return path


def dbutils(local_config: Path, data: Path | None = None, **widgets: str):
    return notebook_runtime.local_dbutils({"env": "local", **widgets}, config_path=local_config, data_csv=data)


def build_runs(local_config: Path, build: str) -> list:
    import mlflow

    tracking.use_environment(load_environment("local", local_config))
    return mlflow.search_runs(
        experiment_names=[contract.EXPERIMENT], filter_string=f"tags.buildnumber = '{build}'", output_format="list"
    )


# --- the notebooks' shape -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_the_first_cell_declares_and_reads_the_widgets_and_nothing_else(name):
    first = ast.parse(cells(name)[0])
    calls = [ast.unparse(node.func) for node in ast.walk(first) if isinstance(node, ast.Call)]
    assert calls and all(call.startswith("dbutils.widgets.") for call in calls), calls
    assert not [node for node in ast.walk(first) if isinstance(node, ast.Import | ast.ImportFrom)]
    declared = [
        statement.value.args[0].value for statement in first.body
        if isinstance(statement, ast.Expr) and ast.unparse(statement.value.func) != "dbutils.widgets.get"
    ]
    assert tuple(declared) == NOTEBOOKS[name]


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_the_notebook_is_thin_one_call_into_the_project_code(name):
    body = "".join(cells(name)[1:])
    calls = [node for node in ast.walk(ast.parse(body)) if isinstance(node, ast.Call)]
    into_project = [ast.unparse(call.func) for call in calls if ast.unparse(call.func).startswith("notebook_runtime.")]
    assert into_project == [f"notebook_runtime.{name.removesuffix('_churn')}"]
    assert sum(1 for line in body.splitlines() if line.strip() and not line.startswith("#")) <= 12


def test_without_file_the_notebook_finds_the_project_from_its_working_folder(monkeypatch):
    """A Databricks job runs a workspace notebook in its own folder and defines no __file__."""
    monkeypatch.chdir(notebook_runtime.NOTEBOOKS_DIR)
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(compile(cells("train_churn")[1], "cell 2", "exec"), {})  # noqa: S102 - the notebook's own cell
    assert sys.path[0] == str(PROJECT_ROOT)


# --- train_churn ----------------------------------------------------------------------------------


def test_train_notebook_trains_the_build_it_is_given(local_config, data):
    exit_value = notebook_runtime.run_notebook(
        "train_churn", dbutils(local_config, data, buildNumber="20261126.9", buildSource="repo@cafe")
    )
    result = json.loads(exit_value)
    assert (result["build"], result["source"], result["reused"]) == ("20261126.9", "repo@cafe", False)
    (run,) = build_runs(local_config, "20261126.9")
    assert run.info.run_id == result["run_id"] and run.data.tags["buildsource"] == "repo@cafe"


def test_train_notebook_run_by_hand_with_empty_widgets_falls_back_to_a_uuid_and_manual(local_config, data):
    result = json.loads(notebook_runtime.run_notebook("train_churn", dbutils(local_config, data)))
    assert uuid.UUID(result["build"]).version == 4 and result["source"] == contract.MANUAL_SOURCE
    (run,) = build_runs(local_config, result["build"])
    assert run.data.tags == {**run.data.tags, "buildnumber": result["build"], "buildsource": "manual"}
    audit = tracking.local_data_root(load_environment("local", local_config)) / "runs" / result["build"]
    assert (audit / "train.csv").is_file() and (audit / "test.csv").is_file()


def test_train_notebook_needs_its_env_widget(local_config, data):
    with pytest.raises(UsageError, match="notebook parameter env is empty"):
        notebook_runtime.run_notebook("train_churn", dbutils(local_config, data, env=""))


# --- deploy_churn ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_deploy_notebook_releases_the_latest_build_to_stage_and_refuses_prod_first(local_config, data):
    """Empty buildNumber: the latest build. Stage starts a real local scoring server; `down` stops it."""
    from deploy.release.rollout import down

    trained = json.loads(notebook_runtime.run_notebook("train_churn", dbutils(local_config, data, buildNumber="b-rel")))
    env = load_environment("local", local_config)
    try:
        with pytest.raises(Refused):  # not validated in stage yet
            notebook_runtime.run_notebook("deploy_churn", dbutils(local_config, deployType="Prod"))
        released = json.loads(notebook_runtime.run_notebook("deploy_churn", dbutils(local_config)))
    finally:
        down(env)
    assert (released["slot"], released["build"], released["run_id"]) == ("stage", "b-rel", trained["run_id"])


def test_deploy_notebook_refuses_a_deploy_type_outside_its_dropdown(local_config):
    with pytest.raises(UsageError, match="deployType='QA' is invalid; expected one of Stage, Prod"):
        notebook_runtime.run_notebook("deploy_churn", dbutils(local_config, deployType="QA"))


# --- score_churn ----------------------------------------------------------------------------------


def test_score_notebook_scores_the_date_with_the_version_it_is_given(local_config, spark, tmp_path):
    from deploy.release import registry
    from tests.rollout_fixtures import log_build

    env = load_environment("local", local_config)
    log_build(env, "b-nb-score")
    version = registry.register(registry.find_run("b-nb-score"))
    customers = tmp_path / "customers.csv"
    synthetic.generate(120, seed=2).to_csv(customers, index=False)
    widgets = {"version": version, "scoringDate": "2026-12-01", "input": str(customers)}
    result = json.loads(notebook_runtime.run_notebook("score_churn", dbutils(local_config, **widgets)))
    assert (result["model_version"], result["build"], result["rows"], result["scoring_date"]) == (
        version, "b-nb-score", 120, "2026-12-01")
    scores = tracking.local_data_root(env) / contract.SCORES_PATH / "scoring_date=2026-12-01"
    assert result["output"] == str(scores) and list(scores.glob("part-*.parquet"))


def test_score_notebook_refuses_a_slot_outside_its_dropdown_and_needs_a_session_on_azure(local_config):
    with pytest.raises(UsageError, match="slot='canary' is invalid; expected one of prod, stage"):
        notebook_runtime.run_notebook("score_churn", dbutils(local_config, slot="canary"))
    with pytest.raises(UsageError, match="scores on Databricks; run the notebook on the job's cluster"):
        notebook_runtime.run_notebook("score_churn", dbutils(local_config, env="dev"))


# --- the dbutils stand-in and the Databricks-side sign-in -----------------------------------------


def test_widgets_behave_like_dbutils():
    widgets = notebook_runtime.LocalWidgets({"buildNumber": "42"})
    widgets.text("buildNumber", "", "buildNumber")
    widgets.text("buildSource", "", "buildSource")
    widgets.dropdown("deployType", "Stage", ["Stage", "Prod"], "Deploy:")
    assert widgets.getAll() == {"buildNumber": "42", "buildSource": "", "deployType": "Stage"}
    with pytest.raises(ValueError, match="InputWidgetNotDefined"):
        widgets.get("undeclared")
    with pytest.raises(ValueError, match="default 'QA' is not one of"):
        widgets.dropdown("other", "QA", ["Stage", "Prod"])


def test_sign_in_reads_the_scope_and_exports_the_identity_for_azure_identity(monkeypatch, local_config):
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST"):
        monkeypatch.delenv(name, raising=False)  # restored after the test, whatever sign-in sets
    env = load_environment("dev", local_config)
    values = {name: f"test-{name}" for name in OUTPUT_NAMES}
    values.update(tenant_id=str(uuid.uuid4()), automation_client_id=str(uuid.uuid4()))
    outputs = StackOutputs(**values)
    secrets = {(notebook_runtime.SECRET_SCOPE, outputs.client_secret_name): "from-key-vault"}
    stand_in = notebook_runtime.local_dbutils({}, secrets=secrets)

    credential = notebook_runtime.sign_in_automation_identity(stand_in, env, outputs)

    assert isinstance(credential, ClientSecretCredential)
    assert os.environ["AZURE_CLIENT_ID"] == outputs.automation_client_id
    assert os.environ["AZURE_TENANT_ID"] == outputs.tenant_id
    assert os.environ["AZURE_CLIENT_SECRET"] == "from-key-vault"
    assert os.environ["AZURE_AUTHORITY_HOST"] == env.cloud.authority_host
    with pytest.raises(ValueError, match="Secret does not exist with scope: churn"):
        notebook_runtime.sign_in_automation_identity(notebook_runtime.local_dbutils({}), env, outputs)


def test_the_secret_scope_is_the_one_the_stack_creates():
    tree = ast.parse((PROJECT_ROOT / "stacks" / "databricks.py").read_text())
    assigned = {
        target.id: node.value.value
        for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets if isinstance(target, ast.Name)
    }
    assert assigned["SECRET_SCOPE"] == notebook_runtime.SECRET_SCOPE


# --- monitor_churn --------------------------------------------------------------------------------


def test_monitor_notebook_judges_the_slot_and_says_what_it_would_retrain(local_config):
    """Locally the notebook runs the same monitor as the CLI; only Databricks starts churn-train."""
    from tests.monitoring_fixtures import reference_and_current, serve, traffic, write_log

    env = load_environment("local", local_config)
    reference, drifted = reference_and_current(rows=1000, drift=1.0)
    version = serve(env, "b-watch", reference)
    from datetime import UTC, datetime

    write_log(env, traffic(env, version, drifted, now=datetime.now(UTC)))
    result = json.loads(notebook_runtime.run_notebook("monitor_churn", dbutils(local_config, window="1d")))
    assert (result["slot"], result["version"], result["window"]["text"]) == ("prod", version, "1d")
    assert result["verdict"] == "crossed" and result["exit_status"] == 3
    assert result["retrain"]["started"] is False and result["retrain"]["build"].startswith("monitor-")
    with pytest.raises(UsageError, match="notebook parameter slot='qa' is invalid"):
        notebook_runtime.run_notebook("monitor_churn", dbutils(local_config, slot="qa"))
    with pytest.raises(UsageError, match="--window '7 days' is invalid"):
        notebook_runtime.run_notebook("monitor_churn", dbutils(local_config, window="7 days"))
