"""The Celery side of the comparison: a no-op task and a 20 ms task, with Redis at
REDIS_URL as the broker and no result backend."""
import os
import time

from celery import Celery

app = Celery("benchjobs", broker=os.environ["REDIS_URL"])
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True


@app.task
def noop():
    pass


@app.task
def sleep20():
    time.sleep(0.02)
