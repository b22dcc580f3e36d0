"""`python -m stacks.scan_input cdktf.out <folder>`: the synthesized stacks as checkov can read them.

checkov 3.3.30's terraform_json parser takes every entry of the `terraform` block for a nested block, so
the string `required_version` stops it with "this method receives only dicts" and it skips the whole file
(a "parsing error": no check runs, none fails). The copy drops that one setting, which no check reads;
everything else is byte-for-byte the stack Terraform receives. `make scan` scans the copy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

UNREADABLE = ("required_version",)  # entries of the terraform block checkov cannot parse


def scannable(document: dict[str, Any]) -> dict[str, Any]:
    settings = {key: value for key, value in document.get("terraform", {}).items() if key not in UNREADABLE}
    return {**document, "terraform": settings} if "terraform" in document else document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacks.scan_input", description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="the synthesized output folder (cdktf.out)")
    parser.add_argument("copy", type=Path, help="where to write the copy checkov scans (replaced)")
    args = parser.parse_args(argv)
    stack_files = sorted(args.outdir.glob("stacks/*/cdk.tf.json"))
    if not stack_files:
        print(f"error: no stacks/*/cdk.tf.json in {args.outdir}; expected the output of `cdktn synth`", file=sys.stderr)
        return 2
    shutil.rmtree(args.copy, ignore_errors=True)
    for path in stack_files:
        target = args.copy / path.relative_to(args.outdir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(scannable(json.loads(path.read_text())), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
