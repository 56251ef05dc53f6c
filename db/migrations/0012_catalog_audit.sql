-- Audit records of catalog changes (podcasts, episodes, feed imports), written in the
-- transaction of the change and relayed to the tenant service's audit log, idempotent
-- by event id (services/shared/audit_outbox.py).
CREATE TABLE catalog_audit_outbox (
    tenant_id uuid NOT NULL,
    event_id uuid NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_type text NOT NULL,
    actor_id text NOT NULL DEFAULT '',
    method text NOT NULL,
    resource_type text NOT NULL,
    resource_id text NOT NULL,
    request_id text NOT NULL DEFAULT '',
    details jsonb NOT NULL DEFAULT '{}',
    relayed_at timestamptz,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX catalog_audit_outbox_pending ON catalog_audit_outbox (occurred_at)
    WHERE relayed_at IS NULL;

ALTER TABLE catalog_audit_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE catalog_audit_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON catalog_audit_outbox
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON catalog_audit_outbox TO podmesh_app;

-- The relay finds its work across tenants through this owner-run function, which
-- returns tenant ids only; the records are read in each tenant's transaction.
CREATE POLICY owner_lookup ON catalog_audit_outbox FOR SELECT TO CURRENT_USER USING (true);
CREATE FUNCTION catalog_outbox_tenants()
    RETURNS TABLE (tenant_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT DISTINCT tenant_id FROM catalog_audit_outbox WHERE relayed_at IS NULL $$;
REVOKE ALL ON FUNCTION catalog_outbox_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION catalog_outbox_tenants() TO podmesh_app;
