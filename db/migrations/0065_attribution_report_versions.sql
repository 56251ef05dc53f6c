-- One more for every transaction of a tenant that stores exposures or site events (both
-- ingestion paths call services/attribution/reports/versions.py in their own
-- transaction). The report cache keys finished reports by this number: a report stored
-- at version v is exact for as long as the version is v, so it is reused without
-- rescanning the raw rows and is never stale.
CREATE TABLE attribution_versions (
    tenant_id uuid PRIMARY KEY,
    version bigint NOT NULL
);
ALTER TABLE attribution_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE attribution_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON attribution_versions
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, UPDATE ON attribution_versions TO podmesh_app;

-- A tenant's version in one statement, read before every reuse of a cached report. As
-- tenant_counting_version: SECURITY INVOKER, so row-level security applies, with the
-- tenant set for the function's own query only and the caller's setting restored.
CREATE FUNCTION tenant_attribution_version(tenant uuid) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    AS $$
DECLARE
    previous text := current_setting('app.tenant_id', true);
    found bigint;
BEGIN
    PERFORM set_config('app.tenant_id', tenant::text, true);
    SELECT version INTO found FROM attribution_versions;
    PERFORM set_config('app.tenant_id', coalesce(previous, ''), true);
    RETURN coalesce(found, 0);
END
$$;
REVOKE ALL ON FUNCTION tenant_attribution_version(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_attribution_version(uuid) TO podmesh_app;
