"""The same load under Locust's own command line and web UI:

    locust -f load/src/relayq_load/locustfile.py -H 127.0.0.1:50051 \\
        --grpc-call relayq.v1.IngestService.SubmitJobs --grpc-batch-size 100 --grpc-rps 20

``-u`` users share one request schedule: ``--grpc-total`` requests at most (0 = no cap, stop
with ``-t`` or the UI), ``--grpc-rps`` per second in all (0 = no limit). ``--grpc-report FILE``
also writes the ghz JSON report when Locust quits. Without ``-H`` the host is the local stack's
ingest (``$RELAYQ_INGEST_GRPC`` or ``.relayq/stack.env``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from locust import events
from locust.env import Environment

from relayq_load import user as _user  # a module, so Locust sees only IngestUser as a user
from relayq_load.calls import RequestFactory, resolve, template_as_json
from relayq_load.config import default_ingest_address
from relayq_load.report import ReportInput, RunOptions, build_report
from relayq_load.runner import Recorder

DEFAULT_DATA = (
    '{"task": "demo.echo", "payload": {"n": {{.RequestNumber}}}, '
    '"idempotency_key": "locust-{{newUUID}}"}'
)


@events.init_command_line_parser.add_listener
def _add_options(parser: argparse.ArgumentParser, **_: Any) -> None:
    group = parser.add_argument_group("relayq gRPC")
    group.add_argument("--grpc-call", default="relayq.v1.IngestService.SubmitJob")
    group.add_argument("--grpc-data", default=DEFAULT_DATA, help="a ghz-style JSON template")
    group.add_argument("--grpc-batch-size", type=int, default=1)
    group.add_argument("--grpc-total", type=int, default=0, help="requests at most (0: no cap)")
    group.add_argument("--grpc-rps", type=float, default=0.0, help="requests/s (0: no limit)")
    group.add_argument("--grpc-connections", type=int, default=1)
    group.add_argument("--grpc-insecure", action="store_true", default=True)
    group.add_argument("--grpc-report", default="", help="write a ghz JSON report here")


class IngestUser(_user.CallUser):
    """Submits jobs to relayq's IngestService (or calls whatever ``--grpc-call`` names)."""

    host = default_ingest_address() or ""


@events.init.add_listener
def _make_plan(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    method = resolve(options.grpc_call)
    IngestUser.plan = _user.LoadPlan(
        method=method,
        requests=RequestFactory(method, options.grpc_data, batch_size=options.grpc_batch_size),
        total=options.grpc_total or None,
        rps=options.grpc_rps,
    )
    IngestUser.connections = max(1, options.grpc_connections)
    IngestUser.insecure = options.grpc_insecure
    if options.grpc_report:
        _report_on_quit(environment, Path(options.grpc_report), options)


def _report_on_quit(environment: Environment, path: Path, options: argparse.Namespace) -> None:
    recorder = Recorder()
    environment.events.request.add_listener(recorder.on_request)
    started = time.perf_counter_ns()

    @environment.events.quitting.add_listener
    def _write(**_: Any) -> None:
        import json

        run = RunOptions(
            call=options.grpc_call,
            host=str(environment.host or IngestUser.host),
            insecure=options.grpc_insecure,
            total=options.grpc_total,
            concurrency=int(getattr(options, "num_users", 0) or 0),
            rps=int(options.grpc_rps),
            connections=options.grpc_connections,
            data=template_as_json(options.grpc_data),
            cpus=os.cpu_count() or 1,
        )
        report = build_report(
            recorder.results,
            ReportInput(options=run, total_ns=time.perf_counter_ns() - started),
        )
        path.write_text(json.dumps(report) + "\n", encoding="utf-8")
