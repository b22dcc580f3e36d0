"""The Azure DevOps pipelines in pipelines/: checked against Microsoft's public schema, the real CLI
parser, the templates they use, the config and the Makefile; the little shell they hold is run for real.

Azure Pipelines reads every YAML scalar as a string, so the files are loaded the same way
(`yaml.BaseLoader`). The checker functions are tested on deliberately broken input too, so a check
that silently finds nothing cannot pass. What both CI systems share lives in tests/ci_checks.py.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from config import PROJECT_ROOT, load_environment
from deploy.core.build_id import check_build
from tests.ci_checks import (
    AZURE_ENVS,
    DEPLOY_CALL,
    EXPECTED_COMMANDS,
    PINNED_CREDENTIAL,
    CommandLineError,
    command_lines,
    commands_seen,
    deploy_arguments,
    deploy_command_lines,
    leaves,
    makefile_targets,
    parse_deploy_command,
    vendored_schema,
    walk,
    where,
)

PIPELINES = PROJECT_ROOT / "pipelines"
TEMPLATES = PIPELINES / "templates"
MAIN = PIPELINES / "azure-pipelines.yml"
ROTATION = PIPELINES / "rotate-secret.yml"
AZURE_STEP = TEMPLATES / "azure-step.yml"
PIPELINE_FILES = sorted(PIPELINES.rglob("*.yml"))

SAMPLE_BUILD = "20261126.3"
SAMPLE_MACROS = {
    "Build.BuildNumber": SAMPLE_BUILD,
    "Build.Repository.Name": "churn-mlops",
    "Build.SourceVersion": "0123456789abcdef",
}
TEMPLATE_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
MACRO = re.compile(r"\$\(([A-Za-z_][\w.]*)\)")
SHELL_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|[A-Za-z_]\w*)")
EXPRESSION = re.compile(r"\$\{\{|\$\(|\$\[")


# --- reading the files -------------------------------------------------------------------------


def load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=yaml.BaseLoader)  # noqa: S506 - BaseLoader builds only str/list/dict


@dataclass(frozen=True)
class Parameter:
    name: str
    required: bool
    type: str
    values: tuple[str, ...]
    sample: str  # what stands in for `${{ parameters.<name> }}` when a command line is checked


def declared_parameters(document: Any) -> dict[str, Parameter]:
    raw = document.get("parameters") if isinstance(document, dict) else None
    if isinstance(raw, dict):  # the old form, `name: default`: every parameter has a default
        return {name: Parameter(name, False, "string", (), str(default)) for name, default in raw.items()}
    declared = {}
    for item in raw or []:
        values = tuple(item.get("values") or ())
        default = item.get("default")
        sample = default if isinstance(default, str) else (values[0] if values else "sample")
        required = "default" not in item
        declared[item["name"]] = Parameter(item["name"], required, item.get("type", "string"), values, sample)
    return declared


# --- schema check ------------------------------------------------------------------------------

# Microsoft's public schema (azure-pipelines-vscode), as the check-jsonschema package (a dev dependency) ships it.
AZURE_PIPELINES_SCHEMA = "azure-pipelines.json"

BOOLEAN_WORDS = {"true", "false", "y", "yes", "n", "no", "on", "off"}


def _is_expression(instance: object) -> bool:
    return isinstance(instance, str) and bool(re.fullmatch(r"\s*(\$\{\{.*\}\}|\$\(.*\)|\$\[.*\])\s*", instance))


def _scalar_type(python_type: type, pattern: str | None):
    def check(checker: Any, instance: object) -> bool:
        if isinstance(instance, python_type) and not (python_type is int and isinstance(instance, bool)):
            return True
        if not isinstance(instance, str):
            return False
        return _is_expression(instance) or (
            instance.lower() in BOOLEAN_WORDS if pattern is None else bool(re.fullmatch(pattern, instance))
        )

    return check


def pipeline_validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """The schema's own draft, with typed scalars also accepted as the strings Azure Pipelines reads."""
    base = jsonschema.validators.validator_for(schema)
    checker = base.TYPE_CHECKER.redefine_many(
        {
            "boolean": _scalar_type(bool, None),
            "integer": _scalar_type(int, r"-?\d+"),
            "number": _scalar_type(float, r"-?\d+(\.\d+)?"),
        }
    )
    return jsonschema.validators.extend(base, type_checker=checker)(schema)


def insert_every_branch(node: Any) -> Any:
    """The document with each `${{ if }}`, `${{ else }}` and `${{ each }}` body inserted where the
    template engine would insert it, so every branch is validated (the schema knows no expressions)."""
    if isinstance(node, list):
        expanded: list[Any] = []
        for item in node:
            if isinstance(item, dict) and len(item) == 1 and TEMPLATE_EXPRESSION.fullmatch(next(iter(item))):
                body = insert_every_branch(next(iter(item.values())))
                expanded.extend(body if isinstance(body, list) else [body])
            else:
                expanded.append(insert_every_branch(item))
        return expanded
    if isinstance(node, dict):
        merged: dict[str, Any] = {}
        for key, value in node.items():
            if TEMPLATE_EXPRESSION.fullmatch(key) and isinstance(value, dict):
                merged.update(insert_every_branch(value))
            else:
                merged[key] = insert_every_branch(value)
        return merged
    return node


def schema_problems(document: Any, validator: jsonschema.protocols.Validator) -> list[str]:
    problems = []
    for error in validator.iter_errors(insert_every_branch(document)):
        for leaf in leaves(error):
            message = leaf.message if len(leaf.message) < 200 else leaf.message[:200] + "..."
            problems.append(f"{where(tuple(map(str, leaf.absolute_path)))}: {message}")
    return problems


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    return pipeline_validator(vendored_schema(AZURE_PIPELINES_SCHEMA))


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=lambda path: str(path.relative_to(PIPELINES)))
def test_pipeline_file_matches_the_azure_pipelines_schema(path: Path, validator: jsonschema.protocols.Validator):
    assert schema_problems(load(path), validator) == []


def test_schema_check_names_misspelled_task_inputs_and_step_keys_even_in_a_conditional(
    validator: jsonschema.protocols.Validator,
):
    broken = yaml.load(
        """
steps:
- task: AzureCLI@2
  inputs:
    azureSubscriptions: churn-dev
    scriptType: bash
- script: make test
  displayname: lowercase n
- ${{ if eq(parameters.environment, 'dev') }}:
  - task: PublishPipelineArtifact@1
    inputs:
      targetPath: outputs
      artifactname: lowercase n
""",
        Loader=yaml.BaseLoader,  # noqa: S506
    )
    assert schema_problems(broken, validator) == [
        "steps/0/inputs: Additional properties are not allowed ('azureSubscriptions' was unexpected)",
        "steps/0/inputs: 'azureSubscription' is a required property",
        "steps/1: Additional properties are not allowed ('displayname' was unexpected)",
        "steps/2/inputs: Additional properties are not allowed ('artifactname' was unexpected)",  # inside the if
    ]


def test_schema_check_accepts_a_string_boolean_and_refuses_a_word_that_is_not_one(
    validator: jsonschema.protocols.Validator,
):
    def step(value: str) -> Any:
        return {
            "steps": [
                {
                    "task": "AzureCLI@2",
                    "inputs": {"azureSubscription": "c", "scriptType": "bash", "addSpnToEnvironment": value},
                }
            ]
        }

    assert schema_problems(step("true"), validator) == []
    assert schema_problems(step("${{ parameters.spn }}"), validator) == []
    assert schema_problems(step("maybe"), validator) != []


# --- CLI check ---------------------------------------------------------------------------------


def with_sample_values(text: str, parameters: dict[str, Parameter]) -> str:
    """Replace template expressions, macros and shell variables by sample values a shell would pass."""

    def expression(match: re.Match[str]) -> str:
        name = re.fullmatch(r"parameters\.(\w+)", match.group(1))
        return parameters[name.group(1)].sample if name and name.group(1) in parameters else "sample"

    text = TEMPLATE_EXPRESSION.sub(expression, text)
    text = MACRO.sub(lambda match: SAMPLE_MACROS.get(match.group(1), "sample"), text)
    return SHELL_VARIABLE.sub("sample", text)


def pipeline_commands() -> list[tuple[Path, str, argparse.Namespace | CommandLineError]]:
    parsed: list[tuple[Path, str, argparse.Namespace | CommandLineError]] = []
    for path in PIPELINE_FILES:
        document = load(path)
        parameters = declared_parameters(document)
        for line in deploy_command_lines(document):
            try:
                parsed.append((path, line, parse_deploy_command(with_sample_values(line, parameters))))
            except CommandLineError as error:
                parsed.append((path, line, error))
    return parsed


def test_every_deploy_command_in_the_pipelines_parses_with_the_real_cli():
    commands = pipeline_commands()
    failures = [
        f"{path.relative_to(PROJECT_ROOT)}: {result}"
        for path, _, result in commands
        if isinstance(result, CommandLineError)
    ]
    assert failures == []
    seen = commands_seen([result for _, _, result in commands])
    assert seen >= EXPECTED_COMMANDS, f"the pipelines lack {EXPECTED_COMMANDS - seen}"


def test_train_and_release_carry_the_azure_devops_build_and_source():
    # The run name is the build number: yyyyMMdd.r, e.g. 20261126.3, a valid build id for runs/<build>/.
    assert load(MAIN)["name"] == "$(Date:yyyyMMdd).$(Rev:r)"
    for path, line, args in pipeline_commands():
        if args.command in ("train", "release"):
            assert args.build == SAMPLE_BUILD, f"{path.name}: `{line}` does not pass --build $(Build.BuildNumber)"
        if args.command == "train":
            assert args.source == "churn-mlops@0123456789abcdef", f"{path.name}: `{line}`"
            check_build(args.build, args.source)  # the CLI's own check, before it starts anything


def test_command_extraction_follows_continuations_and_stops_at_shell_operators():
    document = {
        "steps": [
            {
                "script": (
                    'serving="$(.venv/bin/python -m deploy status --env $(env) \\\n  --json | jq -r .slots)"\n'
                    "pipenv run python -m deploy release --env dev --to prod --build $(Build.BuildNumber) 2>&1 | cat\n"
                    'python -m deploy status --env ${{ parameters.environment }} --json > "$OUT/status.json"\n'
                )
            }
        ]
    }
    lines = deploy_command_lines(document)
    assert len(lines) == 3
    parameters = {"environment": Parameter("environment", False, "string", ("dev", "prod"), "dev")}
    arguments = [deploy_arguments(with_sample_values(line, parameters)) for line in lines]
    assert arguments == [
        ["status", "--env", "sample", "--json"],
        ["release", "--env", "dev", "--to", "prod", "--build", SAMPLE_BUILD],
        ["status", "--env", "dev", "--json"],
    ]


@pytest.mark.parametrize(
    ("command", "complaint"),
    [
        ("python -m deploy release --env dev --to staging --build 1", "invalid choice: 'staging'"),
        ("python -m deploy train --env dev --bulid $(Build.BuildNumber)", "unrecognized arguments: --bulid"),
        ("python -m deploy rollback --to prod", "the following arguments are required: --env"),
        ("python -m deploy rotate-secret --env dev --prune-now --keep-old", "not allowed with argument"),
    ],
)
def test_cli_check_reports_a_broken_command_line(command: str, complaint: str):
    with pytest.raises(CommandLineError, match=re.escape(complaint)):
        parse_deploy_command(with_sample_values(command, {}))


# --- template check ----------------------------------------------------------------------------


def template_problems(path: Path) -> list[str]:
    """Missing templates, undeclared or missing parameters, and literal values a template refuses."""
    problems = []
    for at, node in walk(load(path)):
        if not (isinstance(node, dict) and isinstance(node.get("template"), str)) or "@" in node["template"]:
            continue  # not a template reference, or one in another repository
        reference, target = node["template"], path.parent / node["template"]
        here = f"{path.name}: {where(at)}"
        if not target.is_file():
            problems.append(f"{here}: template {reference} not found at {target}")
            continue
        declared = declared_parameters(load(target))
        passed = node.get("parameters") or {}
        problems += [f"{here}: {reference} declares no parameter '{name}'" for name in passed if name not in declared]
        problems += [
            f"{here}: {reference} needs parameter '{name}'"
            for name, parameter in declared.items()
            if parameter.required and name not in passed
        ]
        for name, value in passed.items():
            parameter = declared.get(name)
            if parameter is None or not isinstance(value, str) or EXPRESSION.search(value):
                continue
            if parameter.values and value not in parameter.values:
                expected = ", ".join(parameter.values)
                problems.append(f"{here}: {reference} parameter '{name}' is '{value}'; expected one of {expected}")
            if parameter.type == "boolean" and value.lower() not in BOOLEAN_WORDS:
                problems.append(f"{here}: {reference} parameter '{name}' is '{value}'; expected a boolean")
    return problems


def undeclared_parameter_uses(path: Path) -> list[str]:
    """`${{ parameters.x }}` in a file whose `parameters:` does not declare x."""
    document = load(path)
    declared = declared_parameters(document)
    problems = []
    for at, node in walk(document):
        if not isinstance(node, str):
            continue
        for expression in TEMPLATE_EXPRESSION.findall(node):
            problems += [
                f"{path.name}: {where(at)}: parameters.{name} is not declared"
                for name in re.findall(r"\bparameters\.(\w+)", expression)
                if name not in declared
            ]
    return problems


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=lambda path: str(path.relative_to(PIPELINES)))
def test_templates_exist_and_get_exactly_their_declared_parameters(path: Path):
    assert template_problems(path) == []
    assert undeclared_parameter_uses(path) == []


def test_every_template_is_used():
    referenced = {
        (path.parent / node["template"]).resolve()
        for path in PIPELINE_FILES
        for _, node in walk(load(path))
        if isinstance(node, dict) and "template" in node
    }
    assert {path.resolve() for path in TEMPLATES.glob("*.yml")} <= referenced


def test_template_check_reports_missing_templates_and_wrong_parameters(tmp_path: Path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "step.yml").write_text(
        "parameters:\n- name: environment\n  type: string\n  values: [dev, prod]\n"
        "- name: verbose\n  type: boolean\n  default: false\n"
        "steps:\n- script: echo ${{ parameters.environment }} ${{ parameters.enviroment }}\n"
    )
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(
        "steps:\n"
        "- template: templates/missing.yml\n"
        "- template: templates/step.yml\n  parameters:\n    environment: dev\n    colour: blue\n"
        "- template: templates/step.yml\n  parameters:\n    verbose: 'sure'\n"
        "- template: templates/step.yml\n  parameters:\n    environment: staging\n"
        "- template: templates/step.yml\n  parameters:\n    environment: ${{ parameters.target }}\n"
    )
    problems = "\n".join(template_problems(pipeline))
    assert "template templates/missing.yml not found" in problems
    assert "declares no parameter 'colour'" in problems
    assert "needs parameter 'environment'" in problems
    assert "parameter 'verbose' is 'sure'; expected a boolean" in problems
    assert "parameter 'environment' is 'staging'" in problems
    assert len(template_problems(pipeline)) == 5  # the expression passed last is not judged
    assert undeclared_parameter_uses(tmp_path / "templates" / "step.yml") == [
        "step.yml: steps/0/script: parameters.enviroment is not declared"
    ]
    assert undeclared_parameter_uses(pipeline) == [
        "pipeline.yml: steps/4/parameters/environment: parameters.target is not declared"
    ]


# --- the flow the issue asks for ---------------------------------------------------------------


def stage_map() -> dict[str, dict[str, Any]]:
    return {stage["stage"]: stage for stage in load(MAIN)["stages"]}


def template_uses(node: Any, template: str) -> list[dict[str, Any]]:
    """The parameters of every use of `templates/<template>` (or a sibling's `<template>`) under node."""
    return [
        item.get("parameters") or {}
        for _, item in walk(node)
        if isinstance(item, dict) and str(item.get("template", "")).split("/")[-1] == template
    ]


def test_stages_follow_the_issue_order_and_environment_is_a_runtime_parameter():
    stages = list(stage_map().values())
    assert [stage["stage"] for stage in stages] == [
        "Validate",
        "Infrastructure",
        "Train",
        "Release_Stage",
        "Release_Prod",
    ]
    for previous, stage in itertools.pairwise(stages):
        assert stage["dependsOn"] == previous["stage"]
    environment = declared_parameters(load(MAIN))["environment"]
    assert (environment.sample, sorted(environment.values)) == ("dev", AZURE_ENVS)


def test_validate_runs_the_developer_targets_and_publishes_the_junit_file_make_test_writes():
    steps = stage_map()["Validate"]["jobs"][0]["steps"]
    publish = next(step for step in steps if step.get("task") == "PublishTestResults@2")
    assert publish["condition"] == "succeededOrFailed()"
    assert f"--junitxml={publish['inputs']['testResultsFiles']}" in (PROJECT_ROOT / "Makefile").read_text()
    used = {target for path in PIPELINE_FILES for target in make_targets_used(path)}
    assert {"install", "test", "infra-check-state", "infra-diff", "infra-deploy"} <= used <= makefile_targets()


def make_targets_used(path: Path) -> set[str]:
    """The make targets a pipeline file runs; `infra-${{ parameters.command }}` counts once per allowed value."""
    declared = declared_parameters(load(path))
    used = set()
    for _, text in walk(load(path)):
        if not isinstance(text, str):
            continue
        for target in re.findall(r"\bmake (?:--[\w-]+ )*([\w-]*(?:\$\{\{ *parameters\.\w+ *\}\}[\w-]*)?)", text):
            expression = re.search(r"\$\{\{ *parameters\.(\w+) *\}\}", target)
            if expression is None:
                used.add(target)
            else:
                allowed = declared[expression.group(1)].values
                assert allowed, f"{path.name}: make target {target} depends on a parameter without `values:`"
                used |= {target.replace(expression.group(0), value) for value in allowed}
    return used


def test_infrastructure_and_prod_release_are_deployment_jobs_on_separate_environments():
    stages = stage_map()
    infra = stages["Infrastructure"]["jobs"][0]
    prod = stages["Release_Prod"]["jobs"][0]
    assert "deployment" in infra and "deployment" in prod
    assert infra["environment"] != prod["environment"]
    for job in (infra, prod):
        assert "churn-${{ parameters.environment }}-" in job["environment"]
    assert stages["Infrastructure"]["condition"] == "and(succeeded(), ne(variables['Build.Reason'], 'PullRequest'))"


@pytest.mark.parametrize("env_name", AZURE_ENVS)
def test_infrastructure_deploys_the_stack_and_outputs_file_the_deploy_module_reads(env_name: str):
    env = load_environment(env_name)
    outputs_file = env.outputs_file.relative_to(PROJECT_ROOT).as_posix()
    infra = stage_map()["Infrastructure"]
    values = {"environment": Parameter("environment", False, "string", (), env_name)}
    cdktn = template_uses(infra, "cdktn.yml")
    assert [use["command"] for use in cdktn] == ["diff", "deploy"]
    assert "--auto-approve" in cdktn[1]["arguments"].split()
    template = (TEMPLATES / "cdktn.yml").read_text()
    for use in cdktn:
        command = Parameter("command", False, "string", (), use["command"])
        script = with_sample_values(template, {**values, "command": command})
        assert f"make --no-print-directory infra-{use['command']} ENV={env_name} " in script
    # The make targets run cdktn on churn-<ENV>; deploy writes the outputs file, without sensitive outputs.
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    recipes = dict(re.findall(r"^(infra-\w+): install\n(?:\tmkdir .*\n)?\t(.+)$", makefile, flags=re.MULTILINE))
    assert recipes["infra-diff"].startswith("$(CDKTN) diff churn-$(ENV)")
    deploy = recipes["infra-deploy"].replace("$(ENV)", env_name).split()
    assert deploy[:3] == ["$(CDKTN)", "deploy", env.stack_name]
    assert deploy[deploy.index("--outputs-file") + 1] == outputs_file
    assert "--outputs-file-include-sensitive-outputs" not in deploy
    publish = next(step for _, step in walk(infra) if isinstance(step, dict) and "publish" in step)
    assert with_sample_values(publish["publish"], values) == outputs_file
    download = next(
        item
        for _, item in walk(load(TEMPLATES / "setup.yml"))
        if isinstance(item, dict) and item.get("task") == "DownloadPipelineArtifact@2"
    )
    assert with_sample_values(download["inputs"]["artifactName"], values) == with_sample_values(
        publish["artifact"], values
    )
    assert download["inputs"]["targetPath"] == "$(Build.SourcesDirectory)/" + str(Path(outputs_file).parent)


def test_python_steps_run_inside_the_signed_in_azure_step():
    for path in PIPELINE_FILES:
        for at, node in walk(load(path)):
            if isinstance(node, dict) and at[-1:] != ("parameters",):
                for key in ("script", "bash"):
                    text = node.get(key)
                    assert not (isinstance(text, str) and DEPLOY_CALL.search(text)), (
                        f"{path.name}: {where(at)} runs the deploy CLI outside templates/azure-step.yml"
                    )


def test_prod_release_is_followed_by_the_guarded_rollback_on_failure():
    steps = stage_map()["Release_Prod"]["jobs"][0]["strategy"]["runOnce"]["deploy"]["steps"]
    azure = [step["parameters"] for step in steps if str(step.get("template", "")).endswith("azure-step.yml")]
    release = next(
        index for index, step in enumerate(azure) if "--to prod" in step["script"] and "release" in step["script"]
    )
    rollback = azure[release + 1]
    assert rollback["condition"] == "failed()"
    # The guard is the CLI's (tests/test_ci_commands.py): one line, the build this run released.
    args = parse_deploy_command(with_sample_values(rollback["script"], declared_parameters(load(MAIN))))
    assert (args.command, args.slot, args.only_if_serving) == ("rollback", "prod", SAMPLE_BUILD)


@pytest.mark.parametrize("env_name", AZURE_ENVS)
def test_rotation_runs_weekly_for_every_azure_environment(env_name: str):
    rotation = load(ROTATION)
    assert (rotation["trigger"], rotation["pr"]) == ("none", "none")
    (schedule,) = rotation["schedules"]
    assert len(schedule["cron"].split()) == 5 and schedule["cron"].split()[4] != "*"  # one day a week
    assert schedule["always"] == "true"
    jobs = {use["environment"]: use for use in template_uses(rotation["jobs"], "rotation.yml")}
    assert sorted(jobs) == AZURE_ENVS
    aliases = {resource["pipeline"]: resource for resource in rotation["resources"]["pipelines"]}
    assert jobs[env_name]["serviceConnection"] == f"churn-{env_name}"
    assert aliases[jobs[env_name]["outputsFrom"]]["tags"] == [f"churn-{env_name}"]
    assert f"churn-{env_name}" == load_environment(env_name).stack_name


def test_rotation_rotates_only_when_due_unless_forced():
    steps = load(TEMPLATES / "rotation.yml")["steps"]
    branches = {key: value for step in steps for key, value in step.items() if TEMPLATE_EXPRESSION.fullmatch(key)}
    assert list(branches) == ["${{ if eq(parameters.force, true) }}", "${{ else }}"]
    parameters = declared_parameters(load(TEMPLATES / "rotation.yml"))
    forced, scheduled = (
        parse_deploy_command(with_sample_values(body[0]["parameters"]["script"], parameters))
        for body in branches.values()
    )
    assert (forced.command, forced.if_due, scheduled.command, scheduled.if_due) == (
        "rotate-secret", False, "rotate-secret", True,
    )


def test_nothing_prints_a_token_or_asks_for_sensitive_outputs():
    for path in PIPELINE_FILES:
        text = path.read_text()
        assert "set -x" not in text and "sensitive-outputs" not in text, path.name
        # No static token anywhere: Terraform fetches fresh ones, the CLI login is kept active.
        assert "ARM_OIDC_TOKEN" not in text and "idToken" not in text and "addSpnToEnvironment" not in text
        assert "servicePrincipalKey" not in text and "ARM_CLIENT_SECRET" not in text
        if path != AZURE_STEP:
            assert "System.AccessToken" not in text and "SYSTEM_ACCESSTOKEN" not in text, path.name


def test_shell_is_one_line_per_step_except_where_azure_devops_signs_in():
    """The logic lives in the Makefile and the CLI; a step holds one command line at most."""
    for path in PIPELINE_FILES:
        for at, node in walk(load(path)):
            if not isinstance(node, dict):
                continue
            scripts = [node.get(key) for key in ("script", "bash")] + [(node.get("inputs") or {}).get("inlineScript")]
            for script in filter(None, scripts):
                lines = command_lines(script)
                limit = 4 if path == AZURE_STEP else 1  # there: the connection's names for Terraform, then the script
                assert len(lines) <= limit, f"{path.name}: {where(at)}: {lines}"


# --- the shell they hold, run for real -------------------------------------------------------------


def render(text: str, values: dict[str, str]) -> str:
    """A template's text with `${{ parameters.x }}` and macros replaced as Azure DevOps would."""
    text = TEMPLATE_EXPRESSION.sub(lambda match: values[match.group(1).removeprefix("parameters.")], text)
    return MACRO.sub(lambda match: values[match.group(1)], text)


def run_bash(script: str, folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", "-c", script],
        cwd=folder, env=environment, capture_output=True, text=True, timeout=60, check=False,
    )


def state_check_step() -> dict[str, Any]:
    steps = stage_map()["Infrastructure"]["jobs"][0]["strategy"]["runOnce"]["deploy"]["steps"]
    return next(step for step in steps if "infra-check-state" in step.get("script", ""))


def test_infrastructure_checks_the_state_backend_before_terraform_is_installed_or_run():
    steps = stage_map()["Infrastructure"]["jobs"][0]["strategy"]["runOnce"]["deploy"]["steps"]
    check = steps.index(state_check_step())
    installer = next(i for i, step in enumerate(steps) if ".ci/install-terraform" in step.get("bash", ""))
    first_cdktn = next(i for i, step in enumerate(steps) if str(step.get("template", "")).endswith("cdktn.yml"))
    assert check < installer < first_cdktn


def test_the_state_check_refuses_local_state_and_passes_with_a_backend(tmp_path: Path):
    """The step's own command line, run for real: the Makefile target and the config loader."""
    command = render(state_check_step()["script"], {"environment": "dev"})
    assert load_environment("dev").state_backend is None  # as shipped: local state, fine on a laptop only
    refused = run_bash(command, PROJECT_ROOT, CHURN_CONFIG=str(PROJECT_ROOT / "config" / "environments.toml"))
    assert refused.returncode != 0
    assert "environment dev has no [environments.dev.state_backend] in config/environments.toml" in refused.stderr
    with_backend = tmp_path / "environments.toml"
    with_backend.write_text(
        (PROJECT_ROOT / "config" / "environments.toml").read_text()
        + '\n[environments.dev.state_backend]\nresource_group = "rg-tfstate"\n'
        'storage_account = "sttfstatechurn"\ncontainer = "tfstate"\n'
    )
    passed = run_bash(command, PROJECT_ROOT, CHURN_CONFIG=str(with_backend))
    assert passed.returncode == 0, passed.stderr


def azure_step_task() -> dict[str, Any]:
    (task,) = load(AZURE_STEP)["steps"]
    assert task["task"] == "AzureCLI@2" and task["inputs"]["scriptType"] == "bash"
    return task


def test_azure_step_pins_the_cli_credential_and_gives_only_terraform_the_job_token():
    task = azure_step_task()
    env = task["env"]
    (terraform_only,) = [key for key in env if TEMPLATE_EXPRESSION.fullmatch(key)]
    assert terraform_only == "${{ if eq(parameters.terraform, true) }}"
    assert {key: value for key, value in env.items() if key != terraform_only} == {
        "AZURE_TOKEN_CREDENTIALS": PINNED_CREDENTIAL
    }
    # The providers' Azure DevOps mode: they fetch fresh OIDC tokens from the job with its access token.
    assert env[terraform_only] == {
        "ARM_USE_OIDC": "true", "ARM_USE_CLI": "false", "SYSTEM_ACCESSTOKEN": "$(System.AccessToken)",
        "SYSTEM_OIDCREQUESTURI": "$(System.OidcRequestUri)", "TF_IN_AUTOMATION": "true",
    }
    assert task["inputs"]["keepAzSessionActive"] == "true"  # the Python steps' CLI login outlives its token
    uses = [use for path in PIPELINE_FILES for use in template_uses(load(path), "azure-step.yml")]
    assert {use["displayName"] for use in uses if use.get("terraform") == "true"} == {
        "cdktn ${{ parameters.command }} churn-${{ parameters.environment }}"
    }


def test_azure_step_names_the_service_connection_for_terraform(tmp_path: Path):
    (tmp_path / "az").write_text("#!/bin/bash\necho 00000000-0000-0000-0000-00000000aaaa\n")
    (tmp_path / "az").chmod(0o755)
    script = render(azure_step_task()["inputs"]["inlineScript"], {"script": "env | grep -E '^ARM_' | sort"})
    connection = {  # what AzureCLI@2 sets for a workload identity federation connection
        "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID": "6d2a0c41-0000-0000-0000-000000000001",
        "AZURESUBSCRIPTION_CLIENT_ID": "client-id", "AZURESUBSCRIPTION_TENANT_ID": "tenant-id",
    }
    path = f"{tmp_path}:{os.environ['PATH']}"

    result = run_bash(script, tmp_path, PATH=path, **connection)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ARM_ADO_PIPELINE_SERVICE_CONNECTION_ID=6d2a0c41-0000-0000-0000-000000000001",
        "ARM_CLIENT_ID=client-id",
        "ARM_SUBSCRIPTION_ID=00000000-0000-0000-0000-00000000aaaa",
        "ARM_TENANT_ID=tenant-id",
    ]
    without = run_bash(script, tmp_path, PATH=path)  # a connection with a secret sets none of them
    assert without.returncode != 0
    assert "expected a workload identity federation service connection" in without.stderr
