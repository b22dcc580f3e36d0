"""The shape of a local slot's state file, `<state_dir>/serving/<slot>.json`, shared by its one
writer (`local.LocalTarget`) and its reader (`router`), so that both call the same file damaged.

    {"slot": "stage", "port": 5301,                        # the slot's stable port (the router's)
     "router": {"pid": 4242, "started": "81234"},           # or null; start time in clock ticks since boot
     "deployments": {"churn-v3": {"version": "3", "port": 40123, "process": {"pid": ..., "started": ...}}},
     "traffic": {"churn-v3": 100},                          # shares of recorded deployments
     "previous": "churn-v2"}                                # the rollback target, or null
"""

from __future__ import annotations

from typing import Any

KEYS = ("slot", "port", "router", "deployments", "traffic", "previous")


def new(slot: str, port: int) -> dict[str, Any]:
    return {"slot": slot, "port": port, "router": None, "deployments": {}, "traffic": {}, "previous": None}


def checked(state: Any, slot: str) -> dict[str, Any]:
    """`state` if it has the documented shape; otherwise ValueError naming the first thing wrong."""
    if not isinstance(state, dict):
        raise ValueError(f"expected a JSON object, found {type(state).__name__}")
    for key in KEYS:
        if key not in state:
            raise ValueError(f"no '{key}'")
    if state["slot"] != slot:
        raise ValueError(f"'slot' is {state['slot']!r}, expected {slot!r}")
    if not _is_int(state["port"]):
        raise ValueError(f"'port' is {state['port']!r}, expected an integer")
    _check_process(state["router"], "'router'")
    if not isinstance(state["deployments"], dict):
        raise ValueError("'deployments' is not an object")
    for name, entry in state["deployments"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("version"), str) or not _is_int(entry.get("port")):
            raise ValueError(f"deployment '{name}' lacks a version or an integer port")
        _check_process(entry.get("process"), f"the process of deployment '{name}'")
    if not isinstance(state["traffic"], dict) or not all(
        name in state["deployments"] and _is_int(share) for name, share in state["traffic"].items()
    ):
        raise ValueError("'traffic' must give integer shares to recorded deployments")
    if state["previous"] is not None and not isinstance(state["previous"], str):
        raise ValueError("'previous' is not a deployment name")
    return state


def _check_process(process: Any, what: str) -> None:
    if process is not None and not (
        isinstance(process, dict) and _is_int(process.get("pid")) and isinstance(process.get("started"), str)
    ):
        raise ValueError(f"{what} is not a pid and start time")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
