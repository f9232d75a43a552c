"""The local stack's monitoring: Prometheus, Alertmanager and the alert sink, as service specs.

Prometheus evaluates the rule files rendered into the state directory (:mod:`.rules`: runbook
links on ``RELAYQ_RUNBOOK_BASE_URL``, windows divided by ``RELAYQ_STACK_RULE_TIME_SCALE``) and
sends its alerts to the stack's Alertmanager, whose receivers post to the alert sink
(``relayq-alerts`` reads it). Alertmanager runs only with Prometheus (nothing else would send it
alerts), and the sink only with Alertmanager; each can be skipped (``--skip alertmanager``).
"""

from __future__ import annotations

from collections.abc import Sequence

from relayq_devstack.alertmanager import alert_sink_service, alertmanager_service
from relayq_devstack.config import StackConfig
from relayq_devstack.prometheus import prometheus_service
from relayq_devstack.rules import render_rule_files
from relayq_devstack.services import HOST, ServiceContext, ServiceSpec
from relayq_devstack.state import StatePaths
from relayq_devstack.tools import missing_message


def monitoring_specs(
    ctx: ServiceContext,
    specs: Sequence[ServiceSpec],
    config: StackConfig,
    paths: StatePaths,
) -> tuple[list[ServiceSpec], list[str]]:
    """The monitoring services to start next to ``specs`` (which Prometheus scrapes), and notes
    for what could not start (a tool not installed)."""
    out: list[ServiceSpec] = []
    notes: list[str] = []
    skip = config.skip
    if "prometheus" in skip:
        return out, notes
    alertmanagers: list[str] = []
    if "alertmanager" not in skip:
        manager = alertmanager_service(
            ctx, paths.root / "alertmanager", time_scale=config.rule_time_scale
        )
        if manager is None:
            notes.append(missing_message("alertmanager") + " (not started)")
        else:
            if "alert-sink" not in skip:
                out.append(alert_sink_service(ctx, paths.root / "alerts"))
            out.append(manager)
            alertmanagers.append(f"{HOST}:{ctx.ports['alertmanager']}")
    rules = render_rule_files(
        paths.root / "prometheus" / "rules",
        runbook_base=config.runbook_base,
        time_scale=config.rule_time_scale,
    )
    prometheus = prometheus_service(
        ctx,
        specs,
        paths.root / "prometheus",
        rules=rules,
        interval=config.prometheus_interval,
        alertmanagers=alertmanagers,
    )
    if prometheus is None:
        notes.append(missing_message("prometheus") + " (not started)")
        # Without Prometheus nothing sends alerts: do not run an idle Alertmanager.
        return [], notes
    out.append(prometheus)
    return out, notes
