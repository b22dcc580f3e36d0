"""Bad input that used to crash: each is one line and exit 2 now, with a JSON error under --json, and nothing changed.

Run as a pipeline step would: `python -m deploy` in a process of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.training import synthetic
from tests.conftest import PROJECT_ROOT

SHIPPED = (PROJECT_ROOT / "config" / "environments.toml").read_text()


def deploy(*argv: str) -> tuple[int, str, str]:
    process = subprocess.run(
        [sys.executable, "-m", "deploy", *argv], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        check=False,
    )
    return process.returncode, process.stdout, process.stderr


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    return lines[-1]


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("[environments]\nlocal = 3\n", "environment 'local': is int 3, not a table"),
        ("defaults = 3\n[environments.local]\nkind = 'local'\n", "key 'defaults': is not a table"),
        ("[environments.local]\nkind = 'local'\n[environments.local.local]\nstage_port = 6301.0\n",
         "key 'local.stage_port': 6301.0 is not of type 'integer'"),
        ("[environments.local]\nkind = 'local'\n[environments.local.validation]\nrows = 50.0\n",
         "key 'validation.rows': 50.0 is not of type 'integer'"),
        (b"\x7fELF\x02\x01\x01\x00\xff\xfe", "is not UTF-8 text; expected the environments file"),
        (None, "is a directory; expected the environments file"),
    ],
    ids=["environment-not-a-table", "defaults-not-a-table", "float-port", "float-rows", "binary", "directory"],
)
def test_a_bad_environments_file_is_one_line_and_exit_2(tmp_path: Path, config: str | bytes | None, named: str) -> None:
    path = tmp_path / "environments.toml"
    if config is None:
        path.mkdir()
    elif isinstance(config, bytes):
        path.write_bytes(config)
    else:
        path.write_text(config)
    status, out, err = deploy("status", "--env", "local", "--config", str(path), "--json")
    assert status == 2 and named in one_line(err)
    assert json.loads(out) == {"error": one_line(err), "kind": "config", "exit_status": 2}


def test_a_binary_outputs_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\x00")
    status, out, err = deploy("status", "--env", "dev", "--outputs", str(outputs), "--json")
    assert status == 2 and f"outputs file {outputs} is not UTF-8 JSON text" in one_line(err)
    assert json.loads(out)["kind"] == "usage"


@pytest.fixture
def local(tmp_path: Path) -> Path:
    path = tmp_path / "environments.toml"
    path.write_text(SHIPPED.replace('state_dir = ".state/local"', f'state_dir = "{tmp_path / "state"}"'))
    return path


@pytest.mark.parametrize(
    ("make", "named"),
    [
        ("directory", "is a directory; expected a CSV file"),
        ("age-twice", "column Age appears twice on line 1; expected each column once"),
        ("infinite-balance", "column Balance holds an infinite value (inf, or a number too large such as 1e400) on "
                             "line 4; expected a finite number"),
        ("overflowing-salary", "column EstimatedSalary holds an infinite value (inf, or a number too large such as "
                               "1e400) on line 6; expected a finite number"),
    ],
)
def test_a_bad_churn_table_is_one_line_and_exit_2_and_trains_nothing(local: Path, tmp_path: Path, make: str,
                                                                      named: str) -> None:
    data = tmp_path / "churn.csv"
    table = synthetic.generate(60)
    if make == "directory":
        data.mkdir()
    elif make == "age-twice":
        table.insert(3, "Age", table["Age"] + 1, allow_duplicates=True)
        table.to_csv(data, index=False)
    elif make == "infinite-balance":
        table = table.astype({"Balance": object})
        table.loc[2, "Balance"] = "inf"
        table.to_csv(data, index=False)
    else:
        table.to_csv(data, index=False)
        lines = data.read_text().splitlines()
        header = lines[0].split(",")
        row = lines[5].split(",")
        row[header.index("EstimatedSalary")] = "1e400"
        lines[5] = ",".join(row)
        data.write_text("\n".join(lines) + "\n")
    status, out, err = deploy("train", "--env", "local", "--config", str(local), "--build", "b1", "--data", str(data),
                              "--json")
    assert status == 2 and named in one_line(err)
    assert json.loads(out)["exit_status"] == 2
    assert not (tmp_path / "state" / "churndata" / "runs" / "b1").exists()


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (("train", "--build", ""), "build id is empty"),
        (("train", "--build", "latest"), "build id 'latest' is reserved"),
        (("train", "--build", "b2", "--source", ""), "build source is empty"),
        (("release", "--to", "stage", "--build", ""), "--build is empty"),
        (("rollback", "--to", "stage", "--only-if-serving", ""), "--only-if-serving '' is invalid"),
    ],
    ids=["train-empty-build", "train-latest", "train-empty-source", "release-empty-build", "rollback-empty-guard"],
)
def test_empty_values_are_refused_not_defaulted(local: Path, argv: tuple[str, ...], named: str) -> None:
    status, _, err = deploy(*argv, "--env", "local", "--config", str(local))
    assert status == 2 and named in one_line(err)
