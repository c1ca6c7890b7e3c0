"""supervisord event listener: the testbed kubelet's memory of container starts.

Runs under supervisord as an ``[eventlistener]``; appends every process state change to
``<state>/kube/events.jsonl``. Restart counts and pod events are derived from this real event stream.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from supervisor import childutils


def main() -> None:
    state_dir = Path(sys.argv[1])
    out = state_dir / "kube" / "events.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        fields, _ = childutils.eventdata(payload + "\n")
        record = {
            "t": time.time(),
            "event": headers.get("eventname", ""),
            "process": fields.get("processname", ""),
            "from": fields.get("from_state", ""),
            "pid": int(fields.get("pid", 0) or 0),
            "expected": fields.get("expected", ""),
        }
        with out.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
