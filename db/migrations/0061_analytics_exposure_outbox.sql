-- Analytics' ad deliveries travel to attribution as exposures through this outbox
-- (services/analytics/exposure_relay.py). Triggers on ad_deliveries write one row per
-- delivery counted and one per delivery taken away (a recount, a late request moving
-- a download, RebuildCounts), in the statement that changes ad_deliveries: whatever
-- counting commits, its outbox rows commit with it, and nothing else does.
--
-- change_id orders a delivery's changes: its row in ad_deliveries is locked from the
-- statement that writes the change to the end of the transaction, so a later change of
-- the same delivery draws its id after the earlier one committed. The relay deletes
-- rows once attribution acknowledged them.
CREATE TABLE analytics_exposure_outbox (
    tenant_id uuid NOT NULL,
    change_id bigint GENERATED ALWAYS AS IDENTITY,
    removed boolean NOT NULL,
    episode_id uuid NOT NULL,
    listener_id bytea NOT NULL,
    window_start timestamptz NOT NULL,
    ad_slot_id uuid NOT NULL,
    podcast_id uuid NOT NULL,
    delivered_time timestamptz NOT NULL,
    household_id bytea NOT NULL,
    country_code text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, change_id)
);

ALTER TABLE analytics_exposure_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE analytics_exposure_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON analytics_exposure_outbox
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, DELETE ON analytics_exposure_outbox TO podmesh_app;

-- The relay finds its work across tenants through this owner-run function, which
-- returns tenant ids only; the rows are read in each tenant's transaction.
CREATE POLICY owner_lookup ON analytics_exposure_outbox FOR SELECT TO CURRENT_USER USING (true);
CREATE FUNCTION analytics_exposure_outbox_tenants()
    RETURNS TABLE (tenant_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT DISTINCT tenant_id FROM analytics_exposure_outbox $$;
REVOKE ALL ON FUNCTION analytics_exposure_outbox_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION analytics_exposure_outbox_tenants() TO podmesh_app;

-- Run as the writer (podmesh_app): the rows pass the outbox's row-level security only
-- for the counting transaction's tenant. Ingestion and rebuilds write a download
-- before its ad deliveries, so the download's country is there to copy.
CREATE FUNCTION analytics_exposure_added() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
    AS $$
    BEGIN
        INSERT INTO analytics_exposure_outbox (tenant_id, removed, episode_id, listener_id,
            window_start, ad_slot_id, podcast_id, delivered_time, household_id, country_code)
        SELECT a.tenant_id, false, a.episode_id, a.listener_id, a.window_start, a.ad_slot_id,
            a.podcast_id, a.delivered_time, a.household_id, coalesce(d.country_code, '')
        FROM added a
        LEFT JOIN downloads d ON d.tenant_id = a.tenant_id AND d.episode_id = a.episode_id
            AND d.listener_id = a.listener_id AND d.window_start = a.window_start;
        RETURN NULL;
    END
    $$;
CREATE TRIGGER ad_deliveries_exposures_added AFTER INSERT ON ad_deliveries
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_exposure_added();

CREATE FUNCTION analytics_exposure_removed() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
    AS $$
    BEGIN
        INSERT INTO analytics_exposure_outbox (tenant_id, removed, episode_id, listener_id,
            window_start, ad_slot_id, podcast_id, delivered_time, household_id)
        SELECT tenant_id, true, episode_id, listener_id, window_start, ad_slot_id, podcast_id,
            delivered_time, household_id
        FROM removed;
        RETURN NULL;
    END
    $$;
CREATE TRIGGER ad_deliveries_exposures_removed AFTER DELETE ON ad_deliveries
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_exposure_removed();
