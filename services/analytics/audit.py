"""The relay of analytics' audit records to the tenant service's audit log.

The records themselves are written by triggers (migration 0041_analytics_audit) in the
statements that start a count rebuild or change the counting settings, so each commits
with its change; this only carries them (services.shared.audit_outbox)."""

from __future__ import annotations

from services.shared.audit_outbox import AuditRelay, Outbox, start_relay
from services.shared.server import Resources

OUTBOX = Outbox("analytics")


def start_audit_relay(resources: Resources, interval_s: float) -> AuditRelay:
    return start_relay(resources, OUTBOX, interval_s)
