-- Audit records of analytics' changes (count rebuilds started, counting settings
-- updated), relayed to the tenant service's audit log, idempotent by event id
-- (services/shared/audit_outbox.py).
--
-- Each of these changes is one row of one table, written by one RPC, so a trigger on
-- that table writes the record in the change's own statement: it commits with the
-- change or not at all. Who asked comes from the transaction-local settings every
-- tenant transaction carries (services/shared/db.py); a write outside a request (none
-- today) has no method and is not audited.
CREATE TABLE analytics_audit_outbox (
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
CREATE INDEX analytics_audit_outbox_pending ON analytics_audit_outbox (occurred_at)
    WHERE relayed_at IS NULL;

ALTER TABLE analytics_audit_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE analytics_audit_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON analytics_audit_outbox
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON analytics_audit_outbox TO podmesh_app;

-- The relay finds its work across tenants through this owner-run function, which
-- returns tenant ids only; the records are read in each tenant's transaction.
CREATE POLICY owner_lookup ON analytics_audit_outbox FOR SELECT TO CURRENT_USER USING (true);
CREATE FUNCTION analytics_outbox_tenants()
    RETURNS TABLE (tenant_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT DISTINCT tenant_id FROM analytics_audit_outbox WHERE relayed_at IS NULL $$;
REVOKE ALL ON FUNCTION analytics_outbox_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION analytics_outbox_tenants() TO podmesh_app;

-- Runs as the writer (podmesh_app), so the record passes the outbox's row-level
-- security only for the tenant of the change.
CREATE FUNCTION analytics_audit_record(
    p_tenant_id uuid, p_resource_type text, p_resource_id text, p_details jsonb
) RETURNS void
    LANGUAGE sql SET search_path = public, pg_temp
    AS $$
        INSERT INTO analytics_audit_outbox (tenant_id, event_id, actor_type, actor_id, method,
            resource_type, resource_id, request_id, details)
        SELECT p_tenant_id, gen_random_uuid(), current_setting('app.actor_type', true),
            coalesce(current_setting('app.actor_id', true), ''),
            current_setting('app.method', true), p_resource_type, p_resource_id,
            coalesce(current_setting('app.request_id', true), ''), p_details
        WHERE coalesce(current_setting('app.method', true), '') <> ''
    $$;

CREATE FUNCTION analytics_audit_count_rebuild() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
    AS $$
    BEGIN
        PERFORM analytics_audit_record(NEW.tenant_id, 'count_rebuild', NEW.rebuild_id::text,
            jsonb_build_object(
                'podcast_id', coalesce(NEW.podcast_id::text, ''),
                'start_time', NEW.start_time, 'end_time', NEW.end_time));
        RETURN NULL;
    END
    $$;
CREATE TRIGGER count_rebuilds_audit AFTER INSERT ON count_rebuilds
    FOR EACH ROW EXECUTE FUNCTION analytics_audit_count_rebuild();

-- An upsert fires this once, as an insert or as an update.
CREATE FUNCTION analytics_audit_counting_settings() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
    AS $$
    BEGIN
        PERFORM analytics_audit_record(NEW.tenant_id, 'counting_settings',
            NEW.tenant_id::text,
            jsonb_build_object(
                'excluded_ip_ranges', NEW.excluded_ip_ranges::text[],
                'excluded_user_agents', NEW.excluded_user_agent_patterns));
        RETURN NULL;
    END
    $$;
CREATE TRIGGER counting_settings_audit AFTER INSERT OR UPDATE ON counting_settings
    FOR EACH ROW EXECUTE FUNCTION analytics_audit_counting_settings();
