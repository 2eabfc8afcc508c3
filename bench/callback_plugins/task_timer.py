"""Records the wall time of every task and dumps it as JSON (for bench/ssh_tasks.py).

Enable with ANSIBLE_CALLBACK_PLUGINS=<repo>/bench/callback_plugins ANSIBLE_CALLBACKS_ENABLED=task_timer;
the JSON goes to $TASK_TIMER_OUT when the playbook ends: a list of
{"task", "host", "status", "changed", "task_s", "runner_s"}, in the order the tasks ended.
  task_s:   v2_playbook_on_task_start -> v2_runner_on_ok/failed/unreachable/skipped (what a user waits for);
  runner_s: v2_runner_on_start (the worker got the host) -> the same end.
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: task_timer
    type: aggregate
    short_description: per-task wall time as JSON (benchmarks)
    description: Writes the wall time of every task to the file named by TASK_TIMER_OUT.
    requirements: [enable in configuration]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._task_start = {}
        self._runner_start = {}
        self.records = []

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_start[task._uuid] = time.perf_counter()

    def v2_runner_on_start(self, host, task):
        self._runner_start[(task._uuid, host.get_name())] = time.perf_counter()

    def _end(self, result, status):
        now = time.perf_counter()
        task, host = result._task, result._host.get_name()
        t0 = self._task_start.get(task._uuid)
        r0 = self._runner_start.get((task._uuid, host))
        self.records.append({
            "task": task.get_name(),
            "host": host,
            "status": status,
            "changed": bool(result._result.get("changed")),
            "task_s": None if t0 is None else now - t0,
            "runner_s": None if r0 is None else now - r0,
            "msg": result._result.get("msg") if status != "ok" else None,
        })

    def v2_runner_on_ok(self, result):
        self._end(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._end(result, "failed")

    def v2_runner_on_unreachable(self, result):
        self._end(result, "unreachable")

    def v2_runner_on_skipped(self, result):
        self._end(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        out = os.environ.get("TASK_TIMER_OUT")
        if out:
            with open(out, "w") as f:
                json.dump(self.records, f, indent=1)
