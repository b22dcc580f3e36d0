"""`python -m stacks.summary cdktf.out`: what each synthesized stack would create, read from its cdk.tf.json.

Reads only the JSON (no cdktn import), so it is instant after `cdktn synth`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def summarize(document: dict[str, Any]) -> list[str]:
    """Lines describing one stack: resources per type, data sources, state backend and outputs."""
    resources = Counter({kind: len(items) for kind, items in document.get("resource", {}).items()})
    lookups = sorted(document.get("data", {}))
    backend = next(iter(document.get("terraform", {}).get("backend", {"local": {}})))
    lines = [f"  {count:3d}  {kind}" for kind, count in sorted(resources.items())]
    lines.append(f"  {sum(resources.values()):3d}  resources in total; state backend: {backend}")
    lines.append(f"  looks up: {', '.join(lookups) or 'nothing'}")
    lines.append(f"  outputs: {', '.join(sorted(document.get('output', {})))}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacks.summary", description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="the synthesized output folder (cdktf.out)")
    args = parser.parse_args(argv)
    stack_files = sorted(args.outdir.glob("stacks/*/cdk.tf.json"))
    if not stack_files:
        print(f"error: no stacks/*/cdk.tf.json in {args.outdir}; expected the output of `cdktn synth`", file=sys.stderr)
        return 2
    for path in stack_files:
        print(f"{path.parent.name} would create:")
        try:
            print("\n".join(summarize(json.loads(path.read_text()))))
        except json.JSONDecodeError as exc:
            print(f"error: {path} is not valid JSON ({exc}); re-run `cdktn synth`", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
