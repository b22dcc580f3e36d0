"""Send a synthetic customer base through a local slot's public URL, as callers would (the demo's traffic).

    python -m deploy.monitoring.traffic --env local --slot prod --rows 2000 --drift 1

Each batch of customers is one scoring request to the slot's router, which answers it and records it
in the slot's request log; `monitor` then reads that log. `--drift 1` sends the drifted base of
`deploy.training.synthetic` (a new market, older customers).
"""

from __future__ import annotations

import argparse
import sys

from config import load_environment
from config.naming import SLOTS
from deploy.core.contract import FEATURES
from deploy.core.errors import DeployError
from deploy.training import synthetic

BATCH_ROWS = 50


def send(env_name: str, slot: str, rows: int, drift: float, seed: int, config: str | None = None) -> int:
    """Score `rows` synthetic customers through the slot in batches; returns how many were answered."""
    from deploy.release.targets.local import LocalTarget

    target = LocalTarget(load_environment(env_name, config))
    customers = synthetic.generate(rows, seed, drift=drift)[list(FEATURES)]
    answered = 0
    for start in range(0, rows, BATCH_ROWS):
        answered += len(target.invoke_slot(slot, customers.iloc[start:start + BATCH_ROWS]))
    return answered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="local", help="a local environment (default: local)")
    parser.add_argument("--config", help="environments file")
    parser.add_argument("--slot", default="prod", choices=SLOTS)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--drift", type=float, default=0.0, help="0 (like the training data) to 1 (a new market, "
                        "older customers)")
    parser.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED + 1, help="another sample than training's")
    args = parser.parse_args()
    try:
        answered = send(args.env, args.slot, args.rows, args.drift, args.seed, args.config)
    except (DeployError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else exc.exit_status
    print(f"scored {answered} customers (drift {args.drift}) through slot {args.slot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
