"""The environments file: what the shipped config yields, and one clear line for each kind of mistake."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config import ConfigError, FederatedCredential, load_all, load_environment, naming
from deploy.cli import main as deploy_main
from tests.conftest import PROJECT_ROOT, SHIPPED_CONFIG

MINIMAL = """
[defaults]
location = "westeurope"

[environments.dev]
prefix = "chrndev"
"""


def test_shipped_config_has_local_dev_and_prod():
    envs = load_all(SHIPPED_CONFIG)
    assert set(envs) == {"local", "dev", "prod"}
    assert envs["local"].is_local and envs["local"].names is None
    assert envs["dev"].purge_protection is False and envs["prod"].purge_protection is True
    assert envs["prod"].gate.min_auc == 0.82, "an environment's table overrides [defaults] key by key"
    assert envs["prod"].gate.max_auc_drop == 0.005
    assert envs["dev"].gate.min_auc == 0.80
    assert envs["dev"].tags["environment"] == "dev" and envs["dev"].tags["project"] == "customer-churn"


def test_default_roles_are_least_privilege():
    roles = {(a.role, a.scope) for a in load_environment("dev", SHIPPED_CONFIG).role_assignments}
    assert roles == {
        ("AzureML Data Scientist", "ml_workspace"),
        ("Storage Blob Data Contributor", "ml_storage"),
        ("Storage Blob Data Contributor", "data_container"),
    }


def test_globally_unique_names_differ_between_environments():
    envs = load_all(SHIPPED_CONFIG)
    dev, prod = envs["dev"].names, envs["prod"].names
    for field in ("key_vault", "ml_key_vault", "data_storage_account", "ml_storage_account", "container_registry"):
        assert getattr(dev, field) != getattr(prod, field), field
    assert dev.stage_endpoint == "churnservice-stage-chrndev"
    assert len(prod.prod_endpoint) <= 32


def test_every_derived_name_obeys_its_rule_for_the_longest_prefix():
    names = naming.derive("a" * 10)
    assert len(names.data_storage_account) <= 24 and names.data_storage_account.isalnum()
    assert 3 <= len(names.key_vault) <= 24
    assert names.container_registry.isalnum()
    assert naming.endpoint_name("prod", "a" * 10) == "churnservice-prod-aaaaaaaaaa"


def test_endpoint_name_rules():
    with pytest.raises(naming.InvalidName, match="3-32"):
        naming.check("online_endpoint", "churnservice-stage-" + "x" * 20)
    with pytest.raises(naming.InvalidName, match="starting with a letter"):
        naming.check("online_endpoint", "1churn")
    assert naming.endpoint_name("stage", None) == "churnservice-stage"


def test_cloud_endpoints_can_be_overridden(write_config):
    path = write_config(
        MINIMAL + '\n[environments.dev.endpoints]\ngraph = "https://127.0.0.1:8443"\n'
        '\n[environments.gov]\nprefix = "chrngov"\ncloud = "AzureUSGovernment"\nlocation = "usgovvirginia"\n'
    )
    envs = load_all(path)
    assert envs["dev"].cloud.graph == "https://127.0.0.1:8443"
    assert envs["dev"].cloud.authority_host == "https://login.microsoftonline.com"
    assert envs["gov"].cloud.key_vault_resource == "https://vault.usgovcloudapi.net"
    assert envs["gov"].terraform_environment == "usgovernment"


def test_data_root_is_in_the_environments_cloud(write_config):
    from deploy.platform.outputs import OUTPUT_NAMES, StackOutputs
    from deploy.platform.tracking import data_root

    envs = load_all(write_config(MINIMAL + '\n[environments.cn]\nprefix = "chrncn"\ncloud = "AzureChinaCloud"\n'
                                 'location = "chinanorth3"\n'))
    outputs = StackOutputs(**{name: name for name in OUTPUT_NAMES} | {"data_account": "st", "data_container": "c"})
    assert data_root(envs["dev"], outputs) == "abfss://c@st.dfs.core.windows.net"
    assert data_root(envs["cn"], outputs) == "abfss://c@st.dfs.core.chinacloudapi.cn"


ADO_ISSUER = "https://vstoken.dev.azure.com/00000000-0000-0000-0000-0000000000aa"
ENTRA_ISSUER = "https://login.microsoftonline.com/00000000-0000-0000-0000-0000000000bb/v2.0"
ENTRA_SUBJECT = (
    "/eid1/c/pub/t/uwAAAAAAAAAAAAAAAAAAAA/a/zAAAAAAAAAAAAAAAAAAAAA"
    "/sc/00000000-0000-0000-0000-0000000000aa/00000000-0000-0000-0000-0000000000dd"
)
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"


def federation(*entries: tuple[str, str, str]) -> str:
    return "".join(
        f'\n[[environments.dev.federation]]\nname = "{name}"\nissuer = "{issuer}"\nsubject = "{subject}"\n'
        for name, issuer, subject in entries
    )


def test_federation_is_a_list_of_credentials_in_every_accepted_form(write_config):
    assert load_environment("dev", SHIPPED_CONFIG).federation == ()
    entries = [
        ("azure-devops", ADO_ISSUER, "sc://contoso/churn/churn-dev-automation"),
        ("azure-devops-entra", ENTRA_ISSUER, ENTRA_SUBJECT),
        ("github-dev", GITHUB_ISSUER, "repo:contoso/churn-mlops:environment:churn-dev"),
        ("github-main", GITHUB_ISSUER, "repo:contoso/churn-mlops:ref:refs/heads/main"),
    ]
    env = load_environment("dev", write_config(MINIMAL + federation(*entries)))
    assert env.federation == tuple(FederatedCredential(*entry) for entry in entries)
    gov = MINIMAL.replace("westeurope", "usgovvirginia") + federation(
        ("azure-devops", ENTRA_ISSUER.replace("microsoftonline.com", "microsoftonline.us"), ENTRA_SUBJECT)
    )
    assert load_environment("dev", write_config(gov)).federation[0].issuer.startswith("https://login.microsoftonline.us/")


BAD_CONFIGS = {
    "unknown key": (MINIMAL + "colour = 'blue'\n", "environment 'dev' key 'colour': unknown key; expected one of"),
    "unknown nested key": (
        MINIMAL + "[environments.dev.gate]\nmin_acu = 0.9\n",
        "environment 'dev' key 'gate.min_acu': unknown key; expected one of max_auc_drop, max_champion_drop, min_auc",
    ),
    "missing value": (
        "[environments.dev]\nprefix = 'chrndev'\n",
        "environment 'dev' key 'location': missing; expected a value here or in [defaults]",
    ),
    "prefix too long": (
        MINIMAL.replace('"chrndev"', '"churndevelopment"'),
        "environment 'dev' key 'prefix': 'churndevelopment' is invalid; expected 3-10 lowercase letters and digits",
    ),
    "invalid region": (
        MINIMAL.replace("westeurope", "westeurop"),
        "environment 'dev' key 'location': 'westeurop' is not an Azure region",
    ),
    "duplicate prefix": (
        MINIMAL + "\n[environments.prod]\nprefix = 'chrndev'\n",
        "environment 'prod' key 'prefix': 'chrndev' is already used by environment 'dev'",
    ),
    "owner role": (
        MINIMAL + "role_assignments = [{ role = 'Owner', scope = 'resource_group' }]\n",
        "environment 'dev' key 'role_assignments[0].role': 'Owner' can grant access",
    ),
    "owner role in lower case": (
        MINIMAL + "role_assignments = [{ role = 'owner', scope = 'resource_group' }]\n",
        "environment 'dev' key 'role_assignments[0].role': 'owner' can grant access",
    ),
    "wrong type": (
        MINIMAL + "[environments.dev.gate]\nmin_auc = 'high'\n",
        "environment 'dev' key 'gate.min_auc': 'high' is not of type 'number'",
    ),
    "unknown scope": (
        MINIMAL + "role_assignments = [{ role = 'Reader', scope = 'subscription' }]\n",
        "environment 'dev' key 'role_assignments.0.scope': 'subscription' is not one of",
    ),
    "federation: GitHub issuer, Azure DevOps subject": (
        MINIMAL + federation(("github", GITHUB_ISSUER, "sc://contoso/churn/churn-dev")),
        f"key 'federation[0]': issuer '{GITHUB_ISSUER}' with subject 'sc://contoso/churn/churn-dev' is not an "
        "accepted pair; expected a GitHub Actions job in a GitHub Environment or on a branch",
    ),
    "federation: pull requests never sign in": (
        MINIMAL + federation(("github", GITHUB_ISSUER, "repo:contoso/churn-mlops:pull_request")),
        "key 'federation[0]': issuer 'https://token.actions.githubusercontent.com' with subject "
        "'repo:contoso/churn-mlops:pull_request' is not an accepted pair",
    ),
    "federation: Entra issuer, classic subject": (
        MINIMAL + federation(("azure-devops", ENTRA_ISSUER, "sc://contoso/churn/churn-dev")),
        "is not an accepted pair; expected an Azure DevOps service connection with the Entra ID issuer",
    ),
    "federation: unknown issuer lists every form": (
        MINIMAL + federation(("other", "https://issuer.example.test", "sc://contoso/churn/churn-dev")),
        "expected an Azure DevOps service connection with the Azure DevOps issuer",
    ),
    "federation: the single table of earlier versions": (
        MINIMAL + f'[environments.dev.federation]\nissuer = "{ADO_ISSUER}"\nsubject = "sc://contoso/churn/churn-dev"\n',
        "key 'federation': is a list of credentials; expected [[environments.dev.federation]] tables",
    ),
    "federation: a name twice": (
        MINIMAL + federation(
            ("github", GITHUB_ISSUER, "repo:contoso/churn-mlops:environment:churn-dev"),
            ("github", GITHUB_ISSUER, "repo:contoso/churn-mlops:ref:refs/heads/main"),
        ),
        "key 'federation[1]': repeats the name of federation[0]; expected each credential once",
    ),
    "federation: a subject twice": (
        MINIMAL + federation(
            ("github-a", GITHUB_ISSUER, "repo:contoso/churn-mlops:environment:churn-dev"),
            ("github-b", GITHUB_ISSUER, "repo:contoso/churn-mlops:environment:churn-dev"),
        ),
        "key 'federation[1]': repeats the issuer and subject of federation[0]",
    ),
    "federation: a name Entra ID would not take": (
        MINIMAL + federation(("GitHub Dev", GITHUB_ISSUER, "repo:contoso/churn-mlops:environment:churn-dev")),
        "key 'federation.0.name': 'GitHub Dev' does not match",
    ),
    "not TOML": ("[environments.dev\n", "is not valid TOML"),
    "no environments": ("[defaults]\nlocation = 'westeurope'\n", "key 'environments': missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_clear_error(write_config, case):
    text, expected = BAD_CONFIGS[case]
    with pytest.raises(ConfigError) as caught:
        load_all(write_config(text))
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml not found; expected the environments file"):
        load_all(tmp_path / "nope.toml")


def test_cli_exits_2_with_one_line_and_no_traceback(write_config, capsys):
    path = write_config(MINIMAL.replace("westeurope", "atlantis"))
    assert deploy_main(["status", "--env", "dev", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "config error: environment 'dev' key 'location': 'atlantis' is not an Azure region; "
        "expected a name like westeurope"
    )


def test_cli_unknown_environment(capsys):
    assert deploy_main(["status", "--env", "staging", "--config", str(SHIPPED_CONFIG)]) == 2
    assert "environment 'staging': no such environment; expected one of dev, local, prod" in capsys.readouterr().err


def test_synthesis_stops_on_bad_config_with_exit_2(write_config):
    """`cdktn synth` runs main.py; a bad config must stop it before any provider import."""
    path = write_config(MINIMAL.replace('"chrndev"', '"Chrn-Dev"'))
    result = subprocess.run(
        [sys.executable, "main.py"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        env={"CHURN_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "config error: environment 'dev' key 'prefix': 'Chrn-Dev' is invalid; "
        "expected 3-10 lowercase letters and digits, starting with a letter"
    ]
