"""Which plan each feature file of a folder gets, and why (the planner, `features.planner`, logs the same).

python -m features.plan sql/transactions
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

from features.catalog import require_catalog
from features.planner import choose
from features.schema import HIDDEN
from features.spec import FeatureFileError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m features.plan",
        description="Print the plan each feature file of SQL_DIR gets (segments or its own SQL) and why.",
    )
    parser.add_argument("sql_dir", metavar="SQL_DIR", help="folder of feature files, e.g. sql/transactions")
    parser.add_argument(
        "--config",
        default=os.environ.get("EDDY_CONFIG", "eddy.toml"),
        help="eddy.toml whose [fields] table gives the field types (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        with open(args.config, "rb") as handle:
            fields = tomllib.load(handle).get("fields", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"error: cannot read the fields of {args.config}: {exc}", file=sys.stderr)
        return 1
    fields = {k: v for k, v in fields.items() if k not in HIDDEN}
    try:
        groups = require_catalog(args.sql_dir, fields).groups
    except FeatureFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for group in groups:
        choice = choose(group, fields)
        print(f"{Path(group.path).name}\t{group.name}\t{choice.plan}\t{choice.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
