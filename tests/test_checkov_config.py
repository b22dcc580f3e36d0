"""The checkov configuration: every skipped check carries its reason, and per-stack skips hit only their stack.

The scan itself runs in `make scan` (checkov lives in its own environment under .tools/).
"""

from __future__ import annotations

import re

import yaml

from tests.conftest import PROJECT_ROOT

CONFIG = PROJECT_ROOT / ".checkov.yaml"
CHECK_ID = re.compile(r"CKV2?_AZURE_\d+")


def skip_lines() -> list[str]:
    text = CONFIG.read_text()
    block = text[text.index("skip-check:"):]
    return [line.strip() for line in block.splitlines()[1:] if line.strip().startswith("- ")]


def test_config_scans_terraform_json_and_every_skip_is_listed_once():
    config = yaml.safe_load(CONFIG.read_text())
    assert config["framework"] == ["terraform_json"]
    skips = config["skip-check"]
    assert len(skips) == len(set(skips)) == len(skip_lines())
    assert all(CHECK_ID.fullmatch(skip.split(":")[0]) for skip in skips)


def test_every_skip_has_a_one_line_reason():
    for line in skip_lines():
        entry, _, reason = line[2:].partition("#")
        assert entry.strip() and len(reason.strip().split()) >= 3, f"skip without a reason: {line}"


def test_stack_specific_skips_match_only_the_dev_stack():
    for skip in yaml.safe_load(CONFIG.read_text())["skip-check"]:
        if ":" not in skip:
            continue
        check, pattern = skip.split(":", 1)
        assert check in {"CKV_AZURE_42", "CKV_AZURE_110"}  # purge protection is off in dev by design only
        assert re.match(pattern, "/work/x/cdktf.out/stacks/churn-dev/cdk.tf.json")
        assert not re.match(pattern, "/work/x/cdktf.out/stacks/churn-prod/cdk.tf.json")


def test_purge_protection_is_never_skipped_for_every_stack():
    assert not {"CKV_AZURE_42", "CKV_AZURE_110"} & set(yaml.safe_load(CONFIG.read_text())["skip-check"])
