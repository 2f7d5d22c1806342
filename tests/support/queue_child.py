"""A consumer in a child process that a test can SIGKILL while it holds a lease.

    python tests/support/queue_child.py sqlite PATH CONSUMER LEASE_S
    python tests/support/queue_child.py redis URL CONSUMER LEASE_S

Claims one shard, prints it as one JSON line, then works on it forever.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(backend: str, where: str, consumer: str, lease_s: float) -> int:
    if backend == "sqlite":
        from acquired.daemon.shardstore import open_queue

        queue = open_queue(Path(where))
    else:
        from acquired.daemon.redisqueue import connect

        queue = connect(where, node=consumer)  # type: ignore[assignment]
    leases = queue.claim(consumer, 1, lease_s)
    lease = leases[0]
    print(json.dumps({"shard": lease.shard.shard_id, "deliveries": lease.deliveries}), flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
