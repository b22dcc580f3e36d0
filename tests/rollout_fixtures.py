"""Shared by the rollout tests: builds of a chosen quality logged like training logs them, and a fake
Azure ML workspace behind autospecs of the real azure-ai-ml operation classes.

`log_build` writes what `deploy.training.train_build` leaves behind (a finished run in experiment
automl-churn tagged buildnumber/buildsource, the churn pyfunc model at artifact path `model`
(`deploy.training.packaging`: skops pipeline, probability and decision, a signature over the
contract's features), the audit file runs/<build>/test.csv, the `test_data`
param and tag), but with a small logistic regression on a few hundred rows with a strong signal, so
that a "good" build passes the gate every time and a test stays fast. `weak` sees only Age and
`inverted` learned the labels upside down (AUC far below any gate); `corrupted` was trained and tested on
a table whose label column is inverted, so it scores well on its own (equally inverted) test set.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest.mock import create_autospec

import numpy as np
import pandas as pd

from config import EnvConfig
from deploy.core.contract import (
    CATEGORICAL_FEATURES,
    FEATURES,
    LABEL,
    NUMERIC_FEATURES,
    TAG_BUILD,
    TAG_SOURCE,
    audit_path,
)
from deploy.platform import tracking
from deploy.release import registry
from deploy.training import packaging

QUALITIES = ("good", "weak", "inverted", "corrupted")
THRESHOLD = 0.5  # the builds' decision threshold (training picks one; these builds need not)


def churn_frame(rows: int, seed: int) -> pd.DataFrame:
    """Customers with the contract's features and a label that a linear model can learn well."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "Geography": rng.choice(["France", "Germany", "Spain"], rows),
        "Gender": rng.choice(["Male", "Female"], rows),
        "CreditScore": rng.integers(350, 851, rows),
        "Age": rng.integers(18, 80, rows),
        "Tenure": rng.integers(0, 11, rows),
        "Balance": np.round(rng.uniform(0, 200_000, rows), 2),
        "NumOfProducts": rng.integers(1, 5, rows),
        "HasCrCard": rng.integers(0, 2, rows),
        "IsActiveMember": rng.integers(0, 2, rows),
        "EstimatedSalary": np.round(rng.uniform(10, 200_000, rows), 2),
    })
    logit = (
        0.09 * (frame["Age"] - 45) - 1.6 * frame["IsActiveMember"] + 1.0 * (frame["Geography"] == "Germany")
        + 0.6 * (frame["Gender"] == "Female") - 0.8
    )
    frame[LABEL] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def fitted_model(quality: str, train: pd.DataFrame) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}")
    columns = [
        ("categorical", OneHotEncoder(handle_unknown="ignore"), list(CATEGORICAL_FEATURES)),
        ("numeric", StandardScaler(), list(NUMERIC_FEATURES)),
    ]
    if quality == "weak":
        columns = [("age", StandardScaler(), ["Age"])]
    model = Pipeline([("features", ColumnTransformer(columns)), ("classifier", LogisticRegression(max_iter=500))])
    labels = 1 - train[LABEL] if quality == "inverted" else train[LABEL]
    return model.fit(train[list(FEATURES)], labels)


def log_build(
    env: EnvConfig, build: str, quality: str = "good", seed: int = 0, rows: int = 3000, source: str = "tests@local",
    record_location: bool = True,
) -> str:
    """Log one finished run for `build` in `env`'s (local) MLflow store, as training would; returns its id.

    `record_location=False` leaves out the test_data param and tag (a run from before training recorded them).
    """
    import mlflow

    tracking.use_environment(env)
    experiment_id = tracking.ensure_experiment(env)
    frame = churn_frame(rows, seed)
    if quality == "corrupted":  # the label column arrived inverted: training and its test set both see it
        frame[LABEL] = 1 - frame[LABEL]
    cut = int(rows * 0.7)
    train, test = frame.iloc[:cut], frame.iloc[cut:].reset_index(drop=True)
    model = fitted_model(quality, train)
    test_location = tracking.local_data_root(env) / audit_path(build, "test")
    test_location.parent.mkdir(parents=True, exist_ok=True)
    test.to_csv(test_location, index=False)
    with mlflow.start_run(experiment_id=experiment_id, tags={TAG_BUILD: build, TAG_SOURCE: source}) as run:
        if record_location:
            mlflow.log_param("test_data", str(test_location))
            mlflow.set_tag("test_data", str(test_location))
        mlflow.log_param("decision_threshold", THRESHOLD)
        # As training does: the same pyfunc model from code over a skops file, logged as the run's `model`
        # artifacts (no MLflow 3 logged model).
        packaging.log_model(model, train[list(FEATURES)], THRESHOLD)
    return run.info.run_id


def build_test_set(env: EnvConfig, build: str) -> pd.DataFrame:
    return pd.read_csv(tracking.local_data_root(env) / audit_path(build, "test"))


def offline(version: str, rows: pd.DataFrame) -> list[Any]:
    from deploy.release.smoke import offline_predictions

    return offline_predictions(registry.model_uri(version), rows[list(FEATURES)])


# --- a fake Azure ML workspace ------------------------------------------------------------------------


class FakeWorkspace:
    """Endpoints and deployments in memory, behind `create_autospec` of the real operation classes.

    It behaves as the service does where the rollout depends on it: `get` returns a fresh copy
    (a caller's edits change nothing until sent back), a new deployment takes no traffic, the
    endpoint's traffic must name existing deployments and add up to 100 (or 0), a deployment
    that takes traffic cannot be deleted, and each endpoint's scoring URI is a real HTTP server on
    127.0.0.1 that checks the endpoint token and scores a request with the model version of the
    deployment its `azureml-model-deployment` header names. `wrong` and `broken` deployments answer
    badly or fail, and `failing` ones fail to provision. Use it as a context manager (it stops the server).
    """

    TOKEN = "fake-aml-token"

    def __init__(self, score: Callable[[str, pd.DataFrame], list[Any]]):
        from azure.ai.ml.operations import OnlineDeploymentOperations, OnlineEndpointOperations

        self.score = score
        self.endpoints: dict[str, Any] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.wrong: set[str] = set()
        self.broken: set[str] = set()
        self.failing: set[str] = set()
        self.traffic_at_invoke: list[dict[str, int]] = []
        self.scored: list[tuple[str, str]] = []  # (endpoint, deployment) of each scoring request
        self.connections = 0  # TCP connections the scoring server accepted
        self.online_endpoints = create_autospec(OnlineEndpointOperations, instance=True)
        self.online_deployments = create_autospec(OnlineDeploymentOperations, instance=True)
        self.online_endpoints.get.side_effect = self._get_endpoint
        self.online_endpoints.begin_create_or_update.side_effect = self._put_endpoint
        self.online_endpoints.get_keys.side_effect = self._get_keys
        self.online_deployments.get.side_effect = self._get_deployment
        self.online_deployments.list.side_effect = self._list_deployments
        self.online_deployments.begin_create_or_update.side_effect = self._put_deployment
        self.online_deployments.begin_delete.side_effect = self._delete_deployment
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._scoring_handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def __enter__(self) -> FakeWorkspace:
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def traffic(self, endpoint: str) -> dict[str, int]:
        return dict(self.endpoints[endpoint].traffic or {})

    def traffic_owner(self, endpoint: str) -> str:
        """The deployment that takes a request sent without a deployment header (all traffic goes to one here)."""
        shares = self.traffic(endpoint)
        return max(shares, key=shares.__getitem__) if any(shares.values()) else ""

    def names(self, endpoint: str) -> list[str]:
        return sorted(self.deployments.get(endpoint, {}))

    def _get_endpoint(self, name: str, **_: Any) -> Any:
        if name not in self.endpoints:
            raise _not_found(f"online endpoint {name}")
        return copy.deepcopy(self.endpoints[name])

    def _put_endpoint(self, endpoint: Any, **_: Any) -> Any:
        from azure.ai.ml.entities import ManagedOnlineEndpoint
        from azure.core.exceptions import HttpResponseError

        traffic = dict(endpoint.traffic or {})
        unknown = set(traffic) - set(self.deployments.get(endpoint.name, {}))
        if unknown or sum(traffic.values()) not in (0, 100):
            raise HttpResponseError(message=f"invalid traffic {traffic} for endpoint {endpoint.name}")
        stored = ManagedOnlineEndpoint(
            name=endpoint.name, auth_mode=endpoint.auth_mode, tags=dict(endpoint.tags or {}), traffic=traffic,
            provisioning_state="Succeeded",
            scoring_uri=f"http://127.0.0.1:{self._server.server_address[1]}/{endpoint.name}/score",
        )
        self.endpoints[endpoint.name] = stored
        self.deployments.setdefault(endpoint.name, {})
        return _poller(copy.deepcopy(stored))

    def _get_deployment(self, name: str, endpoint_name: str, **_: Any) -> Any:
        if name not in self.deployments.get(endpoint_name, {}):
            raise _not_found(f"deployment {name} of {endpoint_name}")
        return copy.deepcopy(self.deployments[endpoint_name][name])

    def _list_deployments(self, endpoint_name: str, **_: Any) -> list[Any]:
        return [copy.deepcopy(found) for found in self.deployments.get(endpoint_name, {}).values()]

    def _put_deployment(self, deployment: Any, **_: Any) -> Any:
        from azure.ai.ml.entities import ManagedOnlineDeployment
        from azure.core.exceptions import HttpResponseError

        if deployment.endpoint_name not in self.endpoints:
            raise _not_found(f"online endpoint {deployment.endpoint_name}")
        name, version = deployment.model.split(":")[1:]  # azureml:<name>:<version>, as the SDK sends it
        earlier = self.deployments[deployment.endpoint_name].get(deployment.name)
        if earlier is not None and earlier.provisioning_state == "Failed":
            raise HttpResponseError(
                message=f"deployment {deployment.name} is in Failed state and cannot be updated; delete and recreate it"
            )
        failed = deployment.name in self.failing
        self.deployments[deployment.endpoint_name][deployment.name] = ManagedOnlineDeployment(
            name=deployment.name, endpoint_name=deployment.endpoint_name, tags=dict(deployment.tags or {}),
            model=f"/subscriptions/0/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/w"
                  f"/models/{name}/versions/{version}",
            instance_type=deployment.instance_type, instance_count=deployment.instance_count,
            provisioning_state="Failed" if failed else "Succeeded",
        )
        if failed:
            poller = _poller(None)
            poller.result.side_effect = HttpResponseError(message=f"deployment {deployment.name} failed: quota")
            return poller
        return _poller(copy.deepcopy(self.deployments[deployment.endpoint_name][deployment.name]))

    def _delete_deployment(self, name: str, endpoint_name: str, **_: Any) -> Any:
        from azure.core.exceptions import HttpResponseError

        if self.traffic(endpoint_name).get(name, 0) > 0:
            raise HttpResponseError(message=f"deployment {name} takes traffic and cannot be deleted")
        del self.deployments[endpoint_name][name]
        self.endpoints[endpoint_name].traffic = {
            kept: share for kept, share in self.traffic(endpoint_name).items() if kept != name
        }
        return _poller(None)

    def _get_keys(self, name: str, **_: Any) -> Any:
        from azure.ai.ml.entities import EndpointAuthToken

        self._get_endpoint(name)  # not found, as the service says, for an unknown endpoint
        return EndpointAuthToken(access_token=self.TOKEN)

    def _score(self, endpoint_name: str, deployment_name: str, request: dict[str, Any]) -> tuple[int, str]:
        self.scored.append((endpoint_name, deployment_name))
        self.traffic_at_invoke.append(self.traffic(endpoint_name))
        if deployment_name not in self.deployments.get(endpoint_name, {}):
            return 404, f"no deployment {deployment_name}"
        if deployment_name in self.broken:
            return 500, "upstream request timeout"
        frame = request["input_data"]
        rows = pd.DataFrame(frame["data"], columns=frame["columns"], index=frame["index"])
        if deployment_name in self.wrong:
            return 200, json.dumps([7] * len(rows))
        version = self.deployments[endpoint_name][deployment_name].model.rsplit("/", 1)[1]
        return 200, json.dumps(self.score(version, rows))

    def _scoring_handler(self) -> type[BaseHTTPRequestHandler]:
        workspace = self

        class Scoring(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real endpoint's front end allows

            def setup(self) -> None:
                super().setup()
                workspace.connections += 1

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("Authorization") != f"Bearer {workspace.TOKEN}":
                    status, text = 401, "missing or wrong endpoint token"
                else:
                    endpoint = self.path.strip("/").split("/")[0]
                    # Without the header, the endpoint's traffic picks the deployment, as on Azure ML.
                    chosen = self.headers.get("azureml-model-deployment") or workspace.traffic_owner(endpoint)
                    status, text = workspace._score(endpoint, chosen, body)
                payload = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: Any) -> None:  # keep the test output quiet
                pass

        return Scoring


def _poller(result: Any) -> Any:
    from azure.core.polling import LROPoller

    poller = create_autospec(LROPoller, instance=True)
    poller.result.return_value = result
    return poller


def _not_found(what: str) -> Exception:
    from azure.core.exceptions import ResourceNotFoundError

    return ResourceNotFoundError(message=f"{what} not found")


def stack_outputs(env: EnvConfig, tracking_uri: str) -> Any:
    """Outputs of an Azure environment whose MLflow store is a local SQLite file."""
    from deploy.platform.outputs import OUTPUT_NAMES, StackOutputs

    values = {name: f"test-{name}" for name in OUTPUT_NAMES}
    values.update(mlflow_tracking_uri=tracking_uri, resource_group=env.names.resource_group)
    return StackOutputs(**values)


def outputs_document(env: EnvConfig, tracking_uri: str) -> dict[str, Any]:
    """The outputs file content (`cdktn deploy --outputs-file`) for `stack_outputs`."""
    from dataclasses import asdict

    return {env.stack_name: asdict(stack_outputs(env, tracking_uri))}


# --- a scoring server that misbehaves ------------------------------------------------------------------


def imposter_command(answer: str) -> Callable[..., list[str]]:
    """A `LocalTarget.server_command` that starts a scoring server answering `wrong` predictions or `error`s."""
    import sys

    def command(self: Any, version: str, port: int) -> list[str]:
        return [sys.executable, "-m", "tests.rollout_fixtures", "--answer", answer, "--port", str(port)]

    return command


def serve_imposter(answer: str, port: int) -> None:
    """Answers /ping like an MLflow scoring server, and /invocations wrongly (7 for every row) or with 500."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Imposter(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply(200, b"\n")

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if answer == "error":
                self._reply(500, b'{"error_code": "INTERNAL_ERROR"}')
            else:
                self._reply(200, json.dumps({"predictions": [7] * len(request["dataframe_split"]["data"])}).encode())

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with ThreadingHTTPServer(("127.0.0.1", port), Imposter) as server:
        server.serve_forever()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--answer", choices=("wrong", "error"), required=True)
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    serve_imposter(arguments.answer, arguments.port)


# --- load on a slot's public URL ---------------------------------------------------------------------------


class Load:
    """Scoring requests sent one after another to a local slot's router on a thread, while the block runs.

    `answers` holds (HTTP status, deployment that answered) per request, a connection error as status 0,
    so a test can assert that no request failed while a release or a rollback moved the traffic.
    """

    def __init__(self, port: int, rows: pd.DataFrame, pause_seconds: float = 0.005):
        import http.client

        self.port, self.pause = port, pause_seconds
        self.body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))})
        self.answers: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._client = http.client

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def failures(self) -> list[tuple[int, str | None]]:
        return [answer for answer in self.answers if answer[0] != 200]

    def served_by(self) -> list[str | None]:
        """The deployments that answered, in order, each once per run of answers."""
        runs: list[str | None] = []
        for _, deployment in self.answers:
            if not runs or runs[-1] != deployment:
                runs.append(deployment)
        return runs

    def _run(self) -> None:
        while not self._stop.is_set():
            connection = self._client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                connection.request("POST", "/invocations", body=self.body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                self.answers.append((response.status, response.getheader("azureml-model-deployment")))
            except OSError:
                self.answers.append((0, None))
            finally:
                connection.close()
            self._stop.wait(self.pause)


def azure_cli_world(
    config: Path, tmp_path: Path, monkeypatch: Any, request: Any, builds: tuple[str, ...] = ("A", "B"),
) -> tuple[FakeWorkspace, Path]:
    """Environment dev for `python -m deploy` in-process: a fake Azure ML workspace as its serving target, its
    MLflow store the local one (with `builds` logged), slot locks in a local folder (on Azure they are
    leases in the data container: tests/test_locks.py). Returns the workspace and the outputs file."""
    from config import load_environment
    from deploy.platform import locks
    from deploy.release import targets
    from deploy.release.targets.azureml import AzureMLTarget

    local, dev = load_environment("local", config), load_environment("dev", config)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(outputs_document(dev, tracking.tracking_uri(local, None))))
    workspace = FakeWorkspace(offline)
    request.addfinalizer(lambda: workspace.__exit__(None, None, None))  # stops its scoring server
    monkeypatch.setattr(targets, "for_environment", lambda environment, _: AzureMLTarget(environment, workspace))
    monkeypatch.setattr(tracking, "environment_locks", lambda *_, **__: locks.Locks(str(tmp_path / "churndata")))
    for seed, build in enumerate(builds, start=1):
        log_build(local, build, seed=seed)
    return workspace, outputs
