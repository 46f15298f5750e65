"""Print the dashboard's queries as a Prometheus rule file, so ``promtool check rules`` parses them.

Grafana's variables are replaced by values Prometheus accepts (``$__rate_interval`` by 5m,
``$tenant`` by a regex matching every tenant). ``.ci/run`` runs this and checks the output.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).with_name("syncsvc.json")
VARIABLES = {"$__rate_interval": "5m", "$tenant": ".*"}


def queries(node: Any) -> Iterator[str]:
    """Every panel target's ``expr`` in the dashboard."""
    if isinstance(node, dict):
        expr = node.get("expr")
        if isinstance(expr, str):
            yield expr
        for value in node.values():
            yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def main() -> int:
    """Write the rule file to standard output; fail when the dashboard has no query."""
    found = list(queries(json.loads(DASHBOARD.read_text())))
    if not found:
        print("the dashboard has no query", file=sys.stderr)
        return 1
    lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
    for index, query in enumerate(found, 1):
        expr = query
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        lines += [f"      - record: dashboard_query_{index}", f"        expr: {json.dumps(expr)}"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
