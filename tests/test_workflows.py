"""The GitHub Actions workflows in .github/: checked against SchemaStore's public workflow and action
schemas, the real CLI parser, the local actions and reusable workflow they use, the Makefile and the
config; and against the Azure DevOps pipelines, which they mirror: the same stages, the same commands,
the same credential pinning and the same Terraform.

GitHub reads workflows as YAML 1.2 (`on:` is a key, not a boolean), so the loader resolves only
true/false as booleans. Inputs of the third-party actions are checked against what their action.yml
declares at the pinned commit (read from the actions' repositories when they were pinned).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from config import PROJECT_ROOT, ConfigError, load_environment
from deploy.core.build_id import check_build
from tests import test_pipelines as ado
from tests.ci_checks import (
    AZURE_ENVS,
    DEPLOY_CALL,
    EXPECTED_COMMANDS,
    PINNED_CREDENTIAL,
    CommandLineError,
    command_lines,
    commands_seen,
    deploy_command_lines,
    leaves,
    make_targets_in,
    makefile_targets,
    parse_deploy_command,
    vendored_schema,
    walk,
    where,
)

GITHUB = PROJECT_ROOT / ".github"
CI = GITHUB / "workflows" / "ci.yml"
RELEASE = GITHUB / "workflows" / "release.yml"
ROTATION = GITHUB / "workflows" / "rotate-secret.yml"
AZURE_ACTION = GITHUB / "actions" / "azure" / "action.yml"
SETUP_ACTION = GITHUB / "actions" / "setup" / "action.yml"
WORKFLOW_FILES = sorted((GITHUB / "workflows").glob("*.yml"))
ACTION_FILES = sorted((GITHUB / "actions").glob("*/action.yml"))
GITHUB_FILES = WORKFLOW_FILES + ACTION_FILES

# Each pinned action: its commit and the inputs its action.yml declares there.
PINNED_ACTIONS = {
    "actions/checkout": ("3d3c42e5aac5ba805825da76410c181273ba90b1", "v7.0.1", {
        "allow-unsafe-pr-checkout", "clean", "fetch-depth", "fetch-tags", "filter", "github-server-url", "lfs",
        "path", "persist-credentials", "ref", "repository", "set-safe-directory", "show-progress",
        "sparse-checkout", "sparse-checkout-cone-mode", "ssh-key", "ssh-known-hosts", "ssh-strict", "ssh-user",
        "submodules", "token",
    }),
    "actions/setup-python": ("5fda3b95a4ea91299a34e894583c3862153e4b97", "v7.0.0", {
        "allow-prereleases", "architecture", "cache", "cache-dependency-path", "check-latest", "freethreaded",
        "pip-version", "python-version", "python-version-file", "token", "update-environment",
    }),
    "actions/upload-artifact": ("bbbca2ddaa5d8feaa63e36b76fdaad77386f024f", "v7.0.0", {
        "archive", "compression-level", "if-no-files-found", "include-hidden-files", "name", "overwrite", "path",
        "retention-days",
    }),
    "actions/download-artifact": ("3e5f45b2cfb9172054b4087a40e8e0b5a5461e7c", "v8.0.1", {
        "artifact-ids", "digest-mismatch", "github-token", "merge-multiple", "name", "path", "pattern",
        "repository", "run-id", "skip-decompress",
    }),
    "azure/login": ("f5d393ae46f8fde4be8b75f32e3fc50e654ad0ca", "v3.0.1", {
        "allow-no-subscriptions", "audience", "auth-type", "client-id", "creds", "enable-AzPSSession",
        "environment", "subscription-id", "tenant-id",
    }),
}
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
ENVIRONMENT = "inputs.environment || 'dev'"  # the Azure environment of a release run: chosen, or dev on push
SAMPLE_RUN_ID = "13234567890"
SAMPLE_SHELL = {  # what the workflows' env gives the shell, for a run of release.yml on dev
    "CHURN_ENV": "dev", "CHURN_BUILD": SAMPLE_RUN_ID, "CHURN_SOURCE": "contoso/churn-mlops@0123456789abcdef",
    "RUNNER_TEMP": "/tmp/runner", "RUNNER_TOOL_CACHE": "/opt/hostedtoolcache",
}


class WorkflowLoader(yaml.SafeLoader):
    """YAML 1.2 booleans, as GitHub reads them: `on`, `yes` and `no` stay strings."""


WorkflowLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
WorkflowLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse(text: str) -> Any:
    return yaml.load(text, Loader=WorkflowLoader)  # noqa: S506 - a SafeLoader with fewer booleans


def load(path: Path) -> Any:
    return parse(path.read_text())


def jobs(path: Path = RELEASE) -> dict[str, dict[str, Any]]:
    return load(path)["jobs"]


def steps_of(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every step of a workflow (with its job id) or of a composite action (job id '')."""
    document = load(path)
    if "runs" in document:
        return [("", step) for step in document["runs"]["steps"]]
    return [(job_id, step) for job_id, job in document["jobs"].items() for step in job.get("steps", [])]


def azure_uses(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The steps that go through the Azure step action, with their job id."""
    return [(job, step) for job, step in steps_of(path) if step.get("uses") == "./.github/actions/azure"]


# --- schema check ------------------------------------------------------------------------------------


def schema_problems(document: Any, schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{where(tuple(map(str, leaf.absolute_path)))}: {leaf.message[:200]}"
        for error in validator.iter_errors(document)
        for leaf in leaves(error)
    ]


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    return {"workflow": vendored_schema("github-workflows.json"), "action": vendored_schema("github-actions.json")}


@pytest.mark.parametrize("path", GITHUB_FILES, ids=lambda path: str(path.relative_to(GITHUB)))
def test_file_matches_the_public_github_schema(path: Path, schemas: dict[str, dict[str, Any]]):
    kind = "action" if path.name == "action.yml" else "workflow"
    assert schema_problems(load(path), schemas[kind]) == []


def test_schema_check_names_misspelled_keys_and_wrong_types(schemas: dict[str, dict[str, Any]]):
    broken = parse(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    timeout-minutes: soon\n"
        "    steps:\n    - run: make test\n      shel: bash\n"
    )
    problems = schema_problems(broken, schemas["workflow"])
    assert "jobs/a/steps/0: Additional properties are not allowed ('shel' was unexpected)" in problems
    assert any(problem.startswith("jobs/a/timeout-minutes: 'soon'") for problem in problems), problems
    action = parse(
        "name: x\ndescription: y\ninputs:\n  run:\n    descripton: the command\n"
        "runs:\n  using: composite\n  steps:\n  - run: make\n    shel: bash\n"
    )
    problems = schema_problems(action, schemas["action"])
    assert "inputs/run: Additional properties are not allowed ('descripton' was unexpected)" in problems
    assert "runs/steps/0: Additional properties are not allowed ('shel' was unexpected)" in problems


def test_the_loader_reads_on_as_a_key_and_only_true_false_as_booleans():
    assert load(CI)["on"]["push"] == {"branches-ignore": ["main"]}
    assert parse("a: yes\nb: true\nc: off\n") == {"a": "yes", "b": True, "c": "off"}


# --- the CLI check -----------------------------------------------------------------------------------


def with_sample_values(command: str) -> str:
    """A `run:` line as the runner's shell would see it on a release run of dev."""
    for name, value in SAMPLE_SHELL.items():
        command = command.replace(f'"${name}"', value).replace(f"${name}", value)
    return EXPRESSION.sub("sample", command)


def workflow_commands() -> list[tuple[Path, str, argparse.Namespace | CommandLineError]]:
    parsed: list[tuple[Path, str, argparse.Namespace | CommandLineError]] = []
    for path in GITHUB_FILES:
        for line in deploy_command_lines(load(path)):
            try:
                parsed.append((path, line, parse_deploy_command(with_sample_values(line))))
            except CommandLineError as error:
                parsed.append((path, line, error))
    return parsed


def test_every_deploy_command_in_the_workflows_parses_with_the_real_cli():
    commands = workflow_commands()
    assert [f"{path.name}: {result}" for path, _, result in commands if isinstance(result, CommandLineError)] == []
    seen = commands_seen([result for _, _, result in commands])
    assert seen >= EXPECTED_COMMANDS, f"the workflows lack {EXPECTED_COMMANDS - seen}"


def test_cli_check_reports_a_broken_workflow_line():
    with pytest.raises(CommandLineError, match="unrecognized arguments: --bulid"):
        parse_deploy_command(with_sample_values('.venv/bin/python -m deploy train --env "$CHURN_ENV" --bulid 1'))


def test_train_and_release_carry_the_run_id_as_build_and_the_commit_as_source():
    env = load(RELEASE)["env"]
    # github.run_id: unique in the repository and kept when failed jobs are re-run (run_number restarts
    # when a workflow is re-created, and run_attempt changes on a re-run).
    assert env["CHURN_BUILD"] == "${{ github.run_id }}"
    assert env["CHURN_SOURCE"] == "${{ github.repository }}@${{ github.sha }}"
    assert env["CHURN_ENV"] == "${{ " + ENVIRONMENT + " }}"
    for path, line, args in workflow_commands():
        if args.command in ("train", "release"):
            assert args.build == SAMPLE_RUN_ID, f'{path.name}: `{line}` does not pass --build "$CHURN_BUILD"'
        if args.command == "train":
            assert args.source == SAMPLE_SHELL["CHURN_SOURCE"], f"{path.name}: `{line}`"
            check_build(args.build, args.source)  # the CLI's own check, before it starts anything


# --- local actions, the reusable workflow and pinned actions -----------------------------------------


def uses_problems(path: Path) -> list[str]:
    """Missing local actions or workflows, undeclared or missing inputs, unpinned or unknown actions."""
    problems = []
    for at, node in walk(load(path)):
        if not (isinstance(node, dict) and isinstance(node.get("uses"), str)):
            continue
        here, reference, given = f"{path.name}: {where(at)}", node["uses"], set(node.get("with") or {})
        if reference.startswith("./"):
            target = PROJECT_ROOT / reference
            target = target if target.suffix == ".yml" else target / "action.yml"
            if not target.is_file():
                problems.append(f"{here}: {reference} not found")
                continue
            document = load(target)
            declared = document.get("inputs") or (document["on"].get("workflow_call") or {}).get("inputs") or {}
            if target.parent.name == "workflows" and "workflow_call" not in document["on"]:
                problems.append(f"{here}: {reference} is not a reusable workflow (no workflow_call)")
            problems += [f"{here}: {reference} declares no input '{name}'" for name in sorted(given - set(declared))]
            problems += [
                f"{here}: {reference} needs input '{name}'"
                for name, spec in declared.items() if spec.get("required") and name not in given
            ]
            continue
        action, _, ref = reference.partition("@")
        if action not in PINNED_ACTIONS:
            problems.append(f"{here}: {action} is not one of the reviewed actions")
            continue
        commit, _, inputs = PINNED_ACTIONS[action]
        if ref != commit:
            problems.append(f"{here}: {action} is pinned to '{ref}'; expected the reviewed commit {commit}")
        problems += [f"{here}: {action} has no input '{name}'" for name in sorted(given - inputs)]
    return problems


@pytest.mark.parametrize("path", GITHUB_FILES, ids=lambda path: str(path.relative_to(GITHUB)))
def test_every_action_and_workflow_used_resolves_and_gets_its_inputs(path: Path):
    assert uses_problems(path) == []


def test_pinned_actions_name_their_version_beside_the_commit():
    for path in GITHUB_FILES:
        for line in path.read_text().splitlines():
            for action, (commit, version, _) in PINNED_ACTIONS.items():
                if f"uses: {action}@" in line:
                    assert line.rstrip().endswith(f"@{commit}  # {version}"), f"{path.name}: {line.strip()}"


def test_every_local_action_is_used():
    used = {step["uses"] for path in GITHUB_FILES for _, step in steps_of(path) if "uses" in step}
    assert {f"./.github/actions/{path.parent.name}" for path in ACTION_FILES} <= used


def test_uses_check_reports_missing_actions_wrong_inputs_and_unpinned_actions(tmp_path: Path, monkeypatch):
    workflow = tmp_path / "broken.yml"
    workflow.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "    - uses: ./.github/actions/missing\n"
        "    - uses: ./.github/actions/azure\n      with:\n        client-id: x\n        colour: blue\n"
        "    - uses: actions/checkout@v7\n"
        "    - uses: azure/login@f5d393ae46f8fde4be8b75f32e3fc50e654ad0ca\n      with:\n        client_id: x\n"
        "    - uses: someone/else@0000000000000000000000000000000000000000\n"
    )
    problems = "\n".join(uses_problems(workflow))
    assert "./.github/actions/missing not found" in problems
    assert "./.github/actions/azure declares no input 'colour'" in problems
    assert "./.github/actions/azure needs input 'run'" in problems
    assert "actions/checkout is pinned to 'v7'; expected the reviewed commit" in problems
    assert "azure/login has no input 'client_id'" in problems
    assert "someone/else is not one of the reviewed actions" in problems


# --- the flow, and what it shares with Azure DevOps ---------------------------------------------------


def job_order() -> list[str]:
    """The release jobs, each needing the one before (a chain, checked here)."""
    release = jobs()
    order = [next(job for job, spec in release.items() if "needs" not in spec)]
    while successors := [job for job, spec in release.items() if spec.get("needs") == order[-1]]:
        (successor,) = successors
        order.append(successor)
    assert sorted(order) == sorted(release), "every job is in one chain"
    return order


def test_release_has_the_stages_of_the_azure_devops_pipeline_in_the_same_order():
    stages = ado.stage_map()
    assert job_order() == [stage.lower() for stage in stages]
    assert jobs()["validate"] == {"uses": "./.github/workflows/ci.yml"}
    (validate,) = jobs(CI).values()
    names = [validate["name"]] + [jobs()[job]["name"] for job in job_order()[1:]]
    for name, stage in zip(names, stages.values(), strict=True):  # the same words, up to a parenthesis
        assert name.split(" (")[0] == stage["displayName"].split(" (")[0]


def test_both_systems_validate_with_make_test_and_run_the_same_make_targets():
    (ci_job,) = jobs(CI).values()
    assert [step["run"] for step in ci_job["steps"] if "run" in step] == ["make test"]
    ado_validate = ado.stage_map()["Validate"]["jobs"][0]["steps"]
    assert [step["script"] for step in ado_validate if "script" in step] == ["make test"]
    used = {target for path in GITHUB_FILES for node in walk(load(path)) for target in
            (make_targets_in(node[1]) if isinstance(node[1], str) else ())}
    ado_used = {target for path in ado.PIPELINE_FILES for target in ado.make_targets_used(path)}
    assert used == ado_used == {"install", "test", "infra-check-state", "infra-diff", "infra-deploy"}
    assert used <= makefile_targets()


def test_both_systems_install_terraform_with_the_one_verifying_script():
    github = [step["run"] for _, step in steps_of(RELEASE) if ".ci/install-terraform" in step.get("run", "")]
    azure = [step["bash"] for _, step in walk(load(ado.MAIN)) if isinstance(step, dict) and "install-terraform"
             in str(step.get("bash", ""))]
    assert github == ['.ci/install-terraform "$RUNNER_TOOL_CACHE/terraform"']
    assert azure == ['.ci/install-terraform "$(Agent.ToolsDirectory)/terraform"']


def test_infrastructure_checks_the_state_then_diffs_then_deploys_and_uploads_the_outputs_file():
    infra = jobs()["infrastructure"]["steps"]
    runs = [step.get("run") or step.get("with", {}).get("run") for step in infra]
    assert runs[2:6] == [
        'make --no-print-directory infra-check-state ENV="$CHURN_ENV"',
        '.ci/install-terraform "$RUNNER_TOOL_CACHE/terraform"',
        'make --no-print-directory infra-diff ENV="$CHURN_ENV"',
        "make --no-print-directory infra-deploy ENV=\"$CHURN_ENV\" CDKTN_ARGS='--skip-synth --auto-approve'",
    ]
    upload = infra[-1]["with"]
    outputs_file = load_environment("dev").outputs_file.relative_to(PROJECT_ROOT).as_posix()
    assert upload["path"].replace("${{ env.CHURN_ENV }}", "dev") == outputs_file
    downloads = [step["with"] for _, step in steps_of(SETUP_ACTION) if "download-artifact" in step.get("uses", "")]
    for download in downloads:
        assert download["name"].replace("${{ inputs.environment }}", "dev") == upload["name"].replace(
            "${{ env.CHURN_ENV }}", "dev")
        assert download["path"] == str(Path(outputs_file).parent)


def test_a_release_can_be_started_for_every_azure_environment_and_runs_dev_on_push():
    workflow = load(RELEASE)
    assert sorted(workflow["on"]["workflow_dispatch"]["inputs"]["environment"]["options"]) == AZURE_ENVS
    assert workflow["on"]["workflow_dispatch"]["inputs"]["environment"]["default"] == "dev"
    assert workflow["on"]["push"] == {"branches": ["main"]}
    assert "pull_request" not in workflow["on"]  # pull requests run ci.yml only: nothing that changes Azure


def test_prod_is_a_github_environment_of_its_own_and_the_rest_share_the_environments_one():
    release = jobs()
    assert release["release_prod"]["environment"] == "churn-${{ " + ENVIRONMENT + " }}-prod"
    for job in ("infrastructure", "train", "release_stage"):
        assert release[job]["environment"] == "churn-${{ " + ENVIRONMENT + " }}"
    assert "environment" not in release["validate"]


@pytest.mark.parametrize("env_name", AZURE_ENVS)
def test_the_subjects_the_jobs_present_are_ones_the_config_accepts(env_name: str, write_config):
    """Every GitHub Environment a job signs in from gives a subject the stack can federate."""
    names = {spec["environment"].replace("${{ " + ENVIRONMENT + " }}", env_name) for spec in jobs().values()
             if "environment" in spec}
    names |= {jobs(ROTATION)["rotate"]["environment"].replace("${{ matrix.environment }}", env_name)}
    assert names == {f"churn-{env_name}", f"churn-{env_name}-prod"}
    entries = "".join(
        f'\n[[environments.{env_name}.federation]]\nname = "github-{index}"\n'
        'issuer = "https://token.actions.githubusercontent.com"\n'
        f'subject = "repo:contoso/churn-mlops:environment:{name}"\n'
        for index, name in enumerate(sorted(names))
    )
    config = write_config((PROJECT_ROOT / "config" / "environments.toml").read_text() + entries)
    assert len(load_environment(env_name, config).federation) == 2
    pull_request = config.read_text().replace("environment:churn-", "pull_request:churn-")
    with pytest.raises(ConfigError, match="is not an accepted pair"):
        load_environment(env_name, write_config(pull_request))


def test_release_prod_is_followed_by_the_guarded_rollback_on_failure():
    prod = [step for job, step in azure_uses(RELEASE) if job == "release_prod"]
    release = next(i for i, step in enumerate(prod) if "release --env" in step["with"]["run"])
    rollback = prod[release + 1]
    assert rollback["if"] == "failure()"
    args = parse_deploy_command(with_sample_values(rollback["with"]["run"]))
    assert (args.command, args.slot, args.only_if_serving) == ("rollback", "prod", SAMPLE_RUN_ID)


def test_the_same_build_flows_from_train_to_both_releases_and_the_rollback():
    builds = {
        (args.command, getattr(args, "slot", None)): getattr(args, "build", None) or args.only_if_serving
        for path, _, args in workflow_commands() if path == RELEASE and args.command in ("train", "release", "rollback")
    }
    assert builds == {("train", None): SAMPLE_RUN_ID, ("release", "stage"): SAMPLE_RUN_ID,
                      ("release", "prod"): SAMPLE_RUN_ID, ("rollback", "prod"): SAMPLE_RUN_ID}


def test_one_run_per_environment_at_a_time():
    concurrency = load(RELEASE)["concurrency"]
    assert concurrency == {"group": "churn-${{ " + ENVIRONMENT + " }}", "cancel-in-progress": False}
    rotation = jobs(ROTATION)["rotate"]["concurrency"]
    assert rotation == {"group": "churn-${{ matrix.environment }}-secret", "cancel-in-progress": False}


def test_rotation_runs_weekly_for_every_azure_environment_and_rotates_only_when_due_unless_forced():
    workflow = load(ROTATION)
    (schedule,) = workflow["on"]["schedule"]
    assert len(schedule["cron"].split()) == 5 and schedule["cron"].split()[4] != "*"
    assert schedule["cron"] == ado.load(ado.ROTATION)["schedules"][0]["cron"]
    assert workflow["on"]["workflow_dispatch"]["inputs"]["force"]["type"] == "boolean"
    rotate = workflow["jobs"]["rotate"]
    assert sorted(rotate["strategy"]["matrix"]["environment"]) == AZURE_ENVS
    steps = {step["if"]: parse_deploy_command(with_sample_values(step["with"]["run"]))
             for _, step in azure_uses(ROTATION)}
    assert {condition: args.if_due for condition, args in steps.items()} == {
        "${{ !inputs.force }}": True, "${{ inputs.force }}": False,
    }
    setup = next(step for _, step in steps_of(ROTATION) if step.get("uses") == "./.github/actions/setup")
    assert setup["with"] == {"environment": "${{ matrix.environment }}", "outputs-from": "latest"}


# --- signing in: OIDC only, and the one place that differs from Azure DevOps --------------------------


def test_oidc_only_no_secret_anywhere():
    for path in GITHUB_FILES:
        text = path.read_text()
        assert not re.search(r"\bsecrets\.\w", text), path.name  # the secrets context is never read
        assert "creds:" not in text and "CLIENT_SECRET" not in text, path.name
        assert "ARM_OIDC_TOKEN" not in text, path.name  # no static token: the providers fetch fresh ones
    logins = [(path, step) for path in GITHUB_FILES for _, step in steps_of(path)
              if step.get("uses", "").startswith("azure/login@")]
    assert [path for path, _ in logins] == [AZURE_ACTION]  # the one place that signs in
    assert set(logins[0][1]["with"]) == {"client-id", "tenant-id", "subscription-id"}


def test_only_jobs_that_sign_in_may_ask_for_an_id_token():
    for path in WORKFLOW_FILES:
        workflow = load(path)
        assert workflow["permissions"] == {"contents": "read"}, path.name
        signing_in = {job for job, _ in azure_uses(path)}
        for job_id, job in workflow["jobs"].items():
            wants_token = (job.get("permissions") or {}).get("id-token") == "write"
            assert wants_token == (job_id in signing_in), f"{path.name}: {job_id}"


def azure_action_env() -> dict[str, str]:
    (command,) = [step for _, step in steps_of(AZURE_ACTION) if "run" in step]
    assert command["run"] == "${{ inputs.run }}"
    return command["env"]


def test_every_step_that_runs_the_cli_pins_the_credential_in_both_systems():
    """Each `python -m deploy` runs in the signed-in step of its system, which sets AZURE_TOKEN_CREDENTIALS."""
    for path in GITHUB_FILES:
        for job, step in steps_of(path):
            if path != AZURE_ACTION:
                assert not DEPLOY_CALL.search(step.get("run", "")), f"{path.name}: {job} runs the CLI unsigned"
    signed = [step for path in WORKFLOW_FILES for _, step in azure_uses(path)
              if DEPLOY_CALL.search(step["with"]["run"])]
    assert len(signed) == len(workflow_commands())
    assert azure_action_env()["AZURE_TOKEN_CREDENTIALS"] == PINNED_CREDENTIAL
    ado.test_python_steps_run_inside_the_signed_in_azure_step()  # the same rule on Azure DevOps
    assert ado.azure_step_task()["env"]["AZURE_TOKEN_CREDENTIALS"] == PINNED_CREDENTIAL


def test_terraform_uses_the_providers_refreshing_github_oidc_mode():
    # ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN come from the runner when the job may ask for an id token.
    assert azure_action_env() == {
        "AZURE_TOKEN_CREDENTIALS": PINNED_CREDENTIAL, "ARM_USE_OIDC": "true", "ARM_USE_CLI": "false",
        "ARM_CLIENT_ID": "${{ inputs.client-id }}", "ARM_TENANT_ID": "${{ inputs.tenant-id }}",
        "ARM_SUBSCRIPTION_ID": "${{ inputs.subscription-id }}", "TF_IN_AUTOMATION": "true",
    }
    infra = [step["with"]["run"] for job, step in azure_uses(RELEASE) if job == "infrastructure"]
    assert infra and all(run.startswith("make --no-print-directory infra-") for run in infra)


def test_the_pinned_value_makes_default_azure_credential_build_only_the_cli_credential(monkeypatch):
    from azure.identity import AzureCliCredential

    from deploy.platform.azure_auth import credential

    env = load_environment("dev")
    monkeypatch.setenv("AZURE_CLIENT_ID", "would-make-the-environment-credential-apply")
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", PINNED_CREDENTIAL)
    chain = credential(env)
    assert [type(member) for member in chain.credentials] == [AzureCliCredential]
    monkeypatch.delenv("AZURE_TOKEN_CREDENTIALS")
    unpinned = {type(member).__name__ for member in credential(env).credentials}
    assert {"EnvironmentCredential", "ManagedIdentityCredential", "AzureCliCredential"} <= unpinned


def test_shell_is_one_line_per_step():
    for path in GITHUB_FILES:
        for job, step in steps_of(path):
            for script in filter(None, [step.get("run"), (step.get("with") or {}).get("run")]):
                assert len(command_lines(script)) == 1, f"{path.name}: {job}: {script}"


# --- the stack outputs of the latest release, for the scheduled rotation ----------------------------


def latest_artifact_filter() -> tuple[str, str]:
    step = next(step for _, step in steps_of(SETUP_ACTION) if step.get("id") == "latest")
    return re.search(r"--jq '([^']+)'", step["run"]).group(1), step["env"]["ARTIFACT"]


def artifacts(*runs: tuple[int, str, bool]) -> str:
    """A page of GET /repos/{owner}/{repo}/actions/artifacts?name=..., newest first, as GitHub answers it."""
    return json.dumps({"total_count": len(runs), "artifacts": [
        {"id": index, "name": "outputs-dev", "expired": expired,
         "workflow_run": {"id": run_id, "head_branch": branch, "repository_id": 1}}
        for index, (run_id, branch, expired) in enumerate(runs)
    ]})


@pytest.mark.parametrize(
    ("page", "run_id"),
    [
        (artifacts((30, "feature", False), (20, "main", False), (10, "main", False)), "20"),
        (artifacts((30, "main", True), (10, "main", False)), "10"),
    ],
)
def test_the_rotation_takes_the_outputs_of_the_newest_unexpired_run_on_main(page: str, run_id: str):
    jq = shutil.which("jq")
    assert jq, "jq is on every GitHub runner and Azure DevOps agent; install it to run this check"
    program, artifact = latest_artifact_filter()
    result = subprocess.run([jq, "-r", program], input=page, capture_output=True, text=True, timeout=30,
                            env={**os.environ, "ARTIFACT": artifact.replace("${{ inputs.environment }}", "dev")},
                            check=False)
    assert (result.returncode, result.stdout.strip()) == (0, run_id), result.stderr


def test_without_such_an_artifact_the_rotation_stops_with_one_line():
    program, _ = latest_artifact_filter()
    result = subprocess.run([shutil.which("jq") or "jq", "-r", program], input=artifacts((30, "feature", False)),
                            capture_output=True, text=True, timeout=30, env={**os.environ, "ARTIFACT": "outputs-dev"},
                            check=False)
    assert result.returncode != 0
    assert "no unexpired outputs-dev artifact from a run on main; run release.yml for the environment" in result.stderr


# --- the Terraform both systems install -------------------------------------------------------------

INSTALLER = PROJECT_ROOT / ".ci" / "install-terraform"


def installer_pins() -> dict[str, str]:
    return dict(re.findall(r"^(TERRAFORM_VERSION|SIGNING_KEY_FINGERPRINT)=(\S+)", INSTALLER.read_text(), re.MULTILINE))


def fake_tools(folder: Path, files: dict[str, bytes]) -> Path:
    """A `curl` that serves `files` by the URL's last path segment and logs every URL it is asked for."""
    bin_dir = folder / "bin"
    served = folder / "served"
    bin_dir.mkdir()
    served.mkdir()
    for name, content in files.items():
        (served / name).write_bytes(content)
    (bin_dir / "curl").write_text(
        "#!/bin/bash\n"
        'out=""; url=""\n'
        'while [ $# -gt 0 ]; do\n'
        '  case "$1" in --output) out="$2"; shift 2 ;; -*) shift ;; *) url="$1"; shift ;; esac\n'
        "done\n"
        f'echo "$url" >> "{folder}/curl.log"\n'
        f'cp "{served}/${{url##*/}}" "$out"\n'
    )
    (bin_dir / "curl").chmod(0o755)
    return bin_dir


def run_installer(folder: Path, bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALLER), str(folder / "tools")], capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(folder), **env},
    )


def test_installer_pins_one_version_and_hashicorps_key():
    pins = installer_pins()
    assert re.fullmatch(r"\d+\.\d+\.\d+", pins["TERRAFORM_VERSION"])
    assert re.fullmatch(r"[0-9A-F]{40}", pins["SIGNING_KEY_FINGERPRINT"])
    bash = shutil.which("bash") or "/bin/bash"
    assert subprocess.run([bash, "-n", str(INSTALLER)], check=False, timeout=30).returncode == 0


def test_installer_reuses_an_installed_terraform_and_puts_it_on_both_systems_path(tmp_path: Path):
    version = installer_pins()["TERRAFORM_VERSION"]
    installed = tmp_path / "tools" / version
    installed.mkdir(parents=True)
    (installed / "terraform").write_text(f"#!/bin/bash\necho 'Terraform v{version}'\n")
    (installed / "terraform").chmod(0o755)
    github_path = tmp_path / "github_path"

    result = run_installer(tmp_path, fake_tools(tmp_path, {}), GITHUB_PATH=str(github_path), TF_BUILD="True")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(installed), f"##vso[task.prependpath]{installed}"]
    assert github_path.read_text() == f"{installed}\n"
    assert not (tmp_path / "curl.log").exists()  # nothing downloaded


def test_installer_refuses_a_signing_key_that_is_not_hashicorps(tmp_path: Path):
    gpg = shutil.which("gpg")
    assert gpg, "gpg is on every GitHub runner and Azure DevOps agent; the installer needs it too"
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    keyring = {"GNUPGHOME": str(home), "PATH": os.environ["PATH"]}
    subprocess.run([gpg, "--batch", "--passphrase", "", "--quick-gen-key", "Impostor <impostor@example.test>",
                    "ed25519", "sign", "1d"], env=keyring, capture_output=True, check=True, timeout=60)
    impostor = subprocess.run([gpg, "--batch", "--armor", "--export"], env=keyring, capture_output=True,
                              check=True, timeout=30).stdout
    version = installer_pins()["TERRAFORM_VERSION"]
    files = {
        f"terraform_{version}_linux_amd64.zip": b"not really", f"terraform_{version}_linux_arm64.zip": b"not really",
        f"terraform_{version}_SHA256SUMS": b"", f"terraform_{version}_SHA256SUMS.sig": b"", "pgp-key.txt": impostor,
    }

    result = run_installer(tmp_path, fake_tools(tmp_path, files))

    assert result.returncode == 1
    assert "install-terraform: HashiCorp's signing key has fingerprint '" in result.stderr
    assert f"expected {installer_pins()['SIGNING_KEY_FINGERPRINT']}" in result.stderr
    assert not (tmp_path / "tools").exists() and result.stdout == ""
