-- Analytics: what counting produces and what dashboards read. Raw requests and the
-- counting state are in the ingestion migration; nothing here is ever scanned raw.
--
-- Dimensions are stored as text with '' for unknown, so they can be key columns.
-- Days: `day` columns are calendar days in UTC, `local_day` columns calendar days in
-- the tenant's time zone at the time of counting (tenant settings); queries in
-- either zone read daily cubes, queries in any other zone read the hourly cube.

-- One row per counted download: (listener, episode, counting window).
CREATE TABLE downloads (
    tenant_id uuid NOT NULL,
    episode_id uuid NOT NULL,
    listener_id bytea NOT NULL,
    window_start timestamptz NOT NULL,
    podcast_id uuid NOT NULL,
    -- The first request of the window: the download's timestamp (IAB).
    download_time timestamptz NOT NULL,
    app text NOT NULL DEFAULT '',
    device_class text NOT NULL DEFAULT '',
    os text NOT NULL DEFAULT '',
    country_code text NOT NULL DEFAULT '',
    region_code text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, episode_id, listener_id, window_start)
);
CREATE INDEX downloads_by_time ON downloads (tenant_id, download_time);

-- One row per ad slot delivered inside a counted download.
CREATE TABLE ad_deliveries (
    tenant_id uuid NOT NULL,
    episode_id uuid NOT NULL,
    listener_id bytea NOT NULL,
    window_start timestamptz NOT NULL,
    ad_slot_id uuid NOT NULL,
    podcast_id uuid NOT NULL,
    delivered_time timestamptz NOT NULL,
    household_id bytea NOT NULL,
    PRIMARY KEY (tenant_id, episode_id, listener_id, window_start, ad_slot_id),
    FOREIGN KEY (tenant_id, episode_id, listener_id, window_start)
        REFERENCES downloads (tenant_id, episode_id, listener_id, window_start) ON DELETE CASCADE
);
CREATE INDEX ad_deliveries_by_time ON ad_deliveries (tenant_id, delivered_time);

-- The finest cube: per hour, episode and every breakdown dimension. Short ranges and
-- queries in time zones other than UTC and the tenant's read it.
CREATE TABLE rollup_hourly (
    tenant_id uuid NOT NULL,
    hour timestamptz NOT NULL,
    episode_id uuid NOT NULL,
    app text NOT NULL,
    device_class text NOT NULL,
    country_code text NOT NULL,
    podcast_id uuid NOT NULL,
    downloads bigint NOT NULL DEFAULT 0,
    ads_delivered bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, hour, episode_id, app, device_class, country_code)
);
-- One episode's hours (performance since release) without reading every episode's.
CREATE INDEX rollup_hourly_by_episode ON rollup_hourly (tenant_id, episode_id, hour)
    INCLUDE (downloads);

-- Daily cubes, one per breakdown, so a 90-day series with a breakdown reads a few
-- thousand rows. `zone` is 'UTC' or 'local' (the tenant's time zone).
CREATE TABLE rollup_daily (
    tenant_id uuid NOT NULL,
    zone text NOT NULL CHECK (zone IN ('UTC', 'local')),
    day date NOT NULL,
    episode_id uuid NOT NULL,
    podcast_id uuid NOT NULL,
    downloads bigint NOT NULL DEFAULT 0,
    ads_delivered bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, zone, day, episode_id)
);
-- One episode's days (performance since release, insights, live counters) without
-- reading every episode's.
CREATE INDEX rollup_daily_by_episode ON rollup_daily (tenant_id, zone, episode_id, day)
    INCLUDE (downloads, ads_delivered);

CREATE TABLE rollup_daily_dimension (
    tenant_id uuid NOT NULL,
    zone text NOT NULL CHECK (zone IN ('UTC', 'local')),
    dimension text NOT NULL CHECK (dimension IN ('app', 'device_class', 'country')),
    day date NOT NULL,
    value text NOT NULL,
    episode_id uuid NOT NULL,
    podcast_id uuid NOT NULL,
    downloads bigint NOT NULL DEFAULT 0,
    ads_delivered bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, zone, dimension, day, value, episode_id)
);
CREATE INDEX rollup_daily_dimension_by_episode
    ON rollup_daily_dimension (tenant_id, zone, dimension, episode_id, day)
    INCLUDE (value, downloads, ads_delivered);

-- The same two cubes summed per podcast and per tenant. A network has hundreds of
-- episodes downloaded every day, so a 90-day tenant series with an app breakdown is
-- ~270,000 episode rows (70 ms of SQL) but ~1,400 tenant rows. Kept in step by the
-- statement triggers below in the transaction that writes the episode rows, so
-- ingestion and rebuilds write only the episode-level cubes.
CREATE TABLE rollup_daily_podcast (
    tenant_id uuid NOT NULL,
    zone text NOT NULL CHECK (zone IN ('UTC', 'local')),
    podcast_id uuid NOT NULL,
    day date NOT NULL,
    downloads bigint NOT NULL DEFAULT 0,
    ads_delivered bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, zone, podcast_id, day)
);

CREATE TABLE rollup_daily_tenant (
    tenant_id uuid NOT NULL,
    zone text NOT NULL CHECK (zone IN ('UTC', 'local')),
    day date NOT NULL,
    downloads bigint NOT NULL DEFAULT 0,
    ads_delivered bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, zone, day)
);

CREATE TABLE rollup_daily_dimension_podcast (
    tenant_id uuid NOT NULL,
    zone text NOT NULL CHECK (zone IN ('UTC', 'local')),
    dimension text NOT NULL CHECK (dimension IN ('app', 'device_class', 'country')),
    podcast_id uuid NOT NULL,
    day date NOT NULL,
    value text NOT NULL,
    downloads bigint NOT NULL DEFAULT 0,
    ads_delivered bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, zone, dimension, podcast_id, day, value)
);

CREATE TABLE rollup_daily_dimension_tenant (
    tenant_id uuid NOT NULL,
    zone text NOT NULL CHECK (zone IN ('UTC', 'local')),
    dimension text NOT NULL CHECK (dimension IN ('app', 'device_class', 'country')),
    day date NOT NULL,
    value text NOT NULL,
    downloads bigint NOT NULL DEFAULT 0,
    ads_delivered bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, zone, dimension, day, value)
);

-- Adds what a statement changed in an episode-level cube (new rows minus old rows,
-- read from the statement's transition tables) to the podcast and tenant cubes.
-- Rows are upserted in key order, so concurrent batches lock them in the same order
-- and cannot deadlock on them.
CREATE FUNCTION rollup_daily_roll_up() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changes text := CASE TG_OP
        WHEN 'INSERT' THEN 'SELECT *, 1 AS sign FROM new_rows'
        WHEN 'DELETE' THEN 'SELECT *, -1 AS sign FROM old_rows'
        ELSE 'SELECT *, 1 AS sign FROM new_rows UNION ALL SELECT *, -1 FROM old_rows'
    END;
    dimension_key text := CASE TG_TABLE_NAME
        WHEN 'rollup_daily_dimension' THEN 'dimension, '
        ELSE ''
    END;
    dimension_value text := CASE TG_TABLE_NAME
        WHEN 'rollup_daily_dimension' THEN ', value'
        ELSE ''
    END;
BEGIN
    EXECUTE format(
        'INSERT INTO %1$I AS r (tenant_id, zone, %2$s podcast_id, day %3$s, downloads,
            ads_delivered)
         SELECT tenant_id, zone, %2$s podcast_id, day %3$s, sum(sign * downloads),
            sum(sign * ads_delivered)
         FROM (%4$s) changed
         GROUP BY tenant_id, zone, %2$s podcast_id, day %3$s
         ORDER BY tenant_id, zone, %2$s podcast_id, day %3$s
         ON CONFLICT (tenant_id, zone, %2$s podcast_id, day %3$s) DO UPDATE SET
            downloads = r.downloads + EXCLUDED.downloads,
            ads_delivered = r.ads_delivered + EXCLUDED.ads_delivered',
        TG_TABLE_NAME || '_podcast', dimension_key, dimension_value, changes);
    EXECUTE format(
        'INSERT INTO %1$I AS r (tenant_id, zone, %2$s day %3$s, downloads, ads_delivered)
         SELECT tenant_id, zone, %2$s day %3$s, sum(sign * downloads),
            sum(sign * ads_delivered)
         FROM (%4$s) changed
         GROUP BY tenant_id, zone, %2$s day %3$s
         ORDER BY tenant_id, zone, %2$s day %3$s
         ON CONFLICT (tenant_id, zone, %2$s day %3$s) DO UPDATE SET
            downloads = r.downloads + EXCLUDED.downloads,
            ads_delivered = r.ads_delivered + EXCLUDED.ads_delivered',
        TG_TABLE_NAME || '_tenant', dimension_key, dimension_value, changes);
    RETURN NULL;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rollup_daily', 'rollup_daily_dimension'] LOOP
        EXECUTE format(
            'CREATE TRIGGER %1$s_inserted AFTER INSERT ON %1$I REFERENCING NEW TABLE AS new_rows '
            'FOR EACH STATEMENT EXECUTE FUNCTION rollup_daily_roll_up()', t);
        EXECUTE format(
            'CREATE TRIGGER %1$s_updated AFTER UPDATE ON %1$I '
            'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
            'FOR EACH STATEMENT EXECUTE FUNCTION rollup_daily_roll_up()', t);
        EXECUTE format(
            'CREATE TRIGGER %1$s_deleted AFTER DELETE ON %1$I REFERENCING OLD TABLE AS old_rows '
            'FOR EACH STATEMENT EXECUTE FUNCTION rollup_daily_roll_up()', t);
    END LOOP;
END
$$;

-- Ads delivered per ad slot per day (pacing reads it).
CREATE TABLE rollup_daily_ad_slot (
    tenant_id uuid NOT NULL,
    zone text NOT NULL CHECK (zone IN ('UTC', 'local')),
    day date NOT NULL,
    ad_slot_id uuid NOT NULL,
    episode_id uuid NOT NULL,
    podcast_id uuid NOT NULL,
    ads_delivered bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, zone, day, ad_slot_id)
);

-- Unique listeners: a mergeable HyperLogLog sketch (Apache DataSketches, lg_k 12)
-- of listener ids per day and episode. Any range and any set of episodes is the
-- union of its sketches; COUNT(DISTINCT) never runs at query time.
CREATE TABLE listener_sketches (
    tenant_id uuid NOT NULL,
    zone text NOT NULL CHECK (zone IN ('UTC', 'local')),
    day date NOT NULL,
    episode_id uuid NOT NULL,
    podcast_id uuid NOT NULL,
    sketch bytea NOT NULL,
    PRIMARY KEY (tenant_id, zone, day, episode_id)
);

-- The tenant's own counting filters (the window and time zone are tenant settings).
CREATE TABLE counting_settings (
    tenant_id uuid PRIMARY KEY,
    excluded_ip_ranges cidr[] NOT NULL DEFAULT '{}',
    excluded_user_agent_patterns text[] NOT NULL DEFAULT '{}',
    update_time timestamptz NOT NULL DEFAULT now()
);

-- Events accepted per tenant and month, checked against the monthly quota in the
-- transaction that stores a batch.
CREATE TABLE ingest_usage (
    tenant_id uuid NOT NULL,
    month date NOT NULL,
    events bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, month)
);

-- RebuildCounts jobs.
CREATE TABLE count_rebuilds (
    tenant_id uuid NOT NULL,
    rebuild_id uuid NOT NULL,
    start_time timestamptz NOT NULL,
    end_time timestamptz NOT NULL,
    state text NOT NULL,
    downloads_before bigint,
    downloads_after bigint,
    error text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    finish_time timestamptz,
    PRIMARY KEY (tenant_id, rebuild_id)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'downloads', 'ad_deliveries', 'rollup_hourly', 'rollup_daily',
        'rollup_daily_dimension', 'rollup_daily_podcast', 'rollup_daily_tenant',
        'rollup_daily_dimension_podcast', 'rollup_daily_dimension_tenant',
        'rollup_daily_ad_slot', 'listener_sketches',
        'counting_settings', 'ingest_usage', 'count_rebuilds'
    ] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_tenant_id()) '
            'WITH CHECK (tenant_id = app_tenant_id())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO podmesh_app', t);
    END LOOP;
END
$$;
