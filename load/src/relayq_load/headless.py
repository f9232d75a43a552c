"""What ``relayq-load`` does once its options are checked: run, then write the report.

Imported only after gevent's monkey-patching (see :func:`relayq_load.cli.main`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from relayq_load.calls import template_as_json
from relayq_load.cli import Prepared
from relayq_load.config import default_ingest_address
from relayq_load.report import ReportInput, RunOptions, build_report, summary
from relayq_load.runner import run
from relayq_load.user import LoadPlan


def write_report(report: dict[str, Any], fmt: str, output: Path | None) -> None:
    """Writes the report as ghz would for ``-O fmt`` (to ``output`` or stdout)."""
    if fmt == "json":
        text = json.dumps(report, separators=(",", ":"), ensure_ascii=False) + "\n"
    elif fmt == "pretty":
        text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    else:
        text = summary(report)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, output)


def run_cli(args: argparse.Namespace, prepared: Prepared) -> int:
    """Runs the load; 0 once a report is written (errors of calls are in the report)."""
    host = args.host_option or args.host or default_ingest_address()
    if not host:
        sys.stderr.write(
            "relayq-load: no host: give HOST:PORT, set RELAYQ_INGEST_GRPC, "
            "or start the stack (make up)\n"
        )
        return 2
    plan = LoadPlan(
        method=prepared.method,
        requests=prepared.requests,
        total=None if args.duration else args.total,
        rps=float(args.rps),
        duration=args.duration,
    )
    outcome = run(
        plan,
        host=host,
        concurrency=args.concurrency,
        connections=args.connections,
        insecure=args.insecure,
        timeout=args.timeout,
        metadata=tuple(prepared.metadata.items()),
        progress=not args.quiet,
    )
    options = RunOptions(
        call=prepared.method.full_name,
        host=host,
        insecure=args.insecure,
        total=args.total,
        concurrency=args.concurrency,
        rps=args.rps,
        connections=args.connections,
        duration_ns=round(args.duration * 1e9) if args.duration else 0,
        timeout_ns=round(args.timeout * 1e9),
        data=template_as_json(prepared.data),
        metadata=prepared.metadata or None,
        cpus=os.cpu_count() or 1,
        name=args.name,
    )
    report = build_report(
        outcome.results,
        ReportInput(
            options=options,
            total_ns=outcome.total_ns,
            end_reason=outcome.end_reason,
            name=args.name,
            tags=prepared.tags or None,
        ),
    )
    write_report(report, args.format, args.output)
    if args.output is not None and not args.quiet:
        sys.stderr.write(summary(report))
        per_request = prepared.requests.jobs_per_request
        if per_request > 1:
            ok = report["statusCodeDistribution"].get("OK", 0)
            sys.stderr.write(
                f"\n  {per_request} elements per request: {ok * per_request} in OK calls\n"
            )
        sys.stderr.write(f"\nReport: {args.output}\n")
    return 0
