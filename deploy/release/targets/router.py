"""The stable front door of a local slot: `python -m deploy.release.targets.router --state FILE --port N`.

Each local deployment is its own `mlflow models serve` process on a port of its own; the slot's
URL stays the same because this router listens on the slot's port and forwards every request to
the deployment the slot's state file gives the traffic to. It reads the file per request, so a
release or a rollback moves traffic by rewriting that file (atomically), with no restart and no
signal. Standard library only: it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FORWARD_TIMEOUT_SECONDS = 60
FORWARDED_HEADERS = ("Content-Type", "Accept")


def serving_port(state_file: Path) -> int | None:
    """The port of the deployment that takes this request, by the traffic shares in the state file."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    shares = {
        name: share for name, share in state.get("traffic", {}).items() if share > 0 and name in state["deployments"]
    }
    if not shares:
        return None
    chosen = random.choices(list(shares), weights=list(shares.values()))[0]  # noqa: S311 - traffic split, not crypto
    return state["deployments"][chosen]["port"]


class Forwarder(BaseHTTPRequestHandler):
    state_file: Path  # set on the subclass `serve` builds

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _forward(self) -> None:
        port = serving_port(self.state_file)
        if port is None:
            self.send_error(503, "no deployment of this slot takes traffic")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name: self.headers[name] for name in FORWARDED_HEADERS if self.headers.get(name)}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=FORWARD_TIMEOUT_SECONDS)
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except OSError as exc:
            self.send_error(502, f"the serving deployment on port {port} did not answer: {exc}")
            return
        finally:
            connection.close()
        self.send_response(response.status)
        self.send_header("Content-Type", response.getheader("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def serve(state_file: Path, port: int) -> None:
    handler = type("SlotForwarder", (Forwarder,), {"state_file": state_file})
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, type=Path, help="the slot's state file")
    parser.add_argument("--port", required=True, type=int, help="the slot's stable port")
    args = parser.parse_args()
    serve(args.state, args.port)


if __name__ == "__main__":
    main()
