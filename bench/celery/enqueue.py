"""Send COUNT calls of TASK (noop or sleep20) to the broker.

Usage: REDIS_URL=redis://127.0.0.1:PORT python3 enqueue.py TASK COUNT
"""
import sys

import benchjobs

task = getattr(benchjobs, sys.argv[1])
for _ in range(int(sys.argv[2])):
    task.delay()
