-- A tenant's counting version in one statement, for the report cache, which checks it
-- before every reuse of an answer (services/analytics/report_cache.py). It reads what a
-- tenant transaction would: SECURITY INVOKER, so row-level security applies, with the
-- tenant set for the function's own query only and the caller's setting restored.
CREATE FUNCTION tenant_counting_version(tenant uuid) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    AS $$
DECLARE
    previous text := current_setting('app.tenant_id', true);
    found bigint;
BEGIN
    PERFORM set_config('app.tenant_id', tenant::text, true);
    SELECT version INTO found FROM counting_versions;
    PERFORM set_config('app.tenant_id', coalesce(previous, ''), true);
    RETURN coalesce(found, 0);
END
$$;
REVOKE ALL ON FUNCTION tenant_counting_version(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_counting_version(uuid) TO podmesh_app;
