-- Attribution: tracking pixels, site events (what visitors did on sponsors' sites)
-- and exposures (ads delivered to households), the two raw streams every report is
-- computed from. Sponsors, campaigns and line items are the campaign service's and are
-- referenced by id only.
--
-- Households are the keyed hash of the normalised client IP (services/shared/client_ip.py),
-- the same as analytics', so a listener's exposures and site visits meet; raw IPs are
-- never stored.

CREATE TABLE pixels (
    tenant_id uuid NOT NULL,
    pixel_id uuid NOT NULL,
    sponsor_id uuid NOT NULL,
    display_name text NOT NULL DEFAULT '' CHECK (length(display_name) <= 200),
    state smallint NOT NULL DEFAULT 1 CHECK (state IN (1, 2)),
    -- Normalised "scheme://host[:port]" origins; empty allows the sponsor's domain and
    -- its subdomains.
    allowed_origins text[] NOT NULL DEFAULT '{}',
    last_event_time timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, pixel_id)
);
CREATE INDEX pixels_page ON pixels (tenant_id, created_at, pixel_id);
CREATE INDEX pixels_sponsor ON pixels (tenant_id, sponsor_id);

-- Raw site events and exposures: append-only, one partition per UTC day of the event's
-- own time (TimescaleDB chunks where the extension exists), dropped whole at the raw
-- retention like listener requests. Fixed-width columns first.
DO $$
DECLARE
    site_event_columns constant text := $cols$
        tenant_id uuid NOT NULL,
        event_time timestamptz NOT NULL,
        receive_time timestamptz NOT NULL,
        sponsor_id uuid NOT NULL,
        pixel_id uuid,
        event_type smallint NOT NULL CHECK (event_type BETWEEN 1 AND 3),
        value_minor bigint NOT NULL DEFAULT 0 CHECK (value_minor >= 0),
        household_id bytea NOT NULL,
        event_id text NOT NULL,
        currency_code text NOT NULL DEFAULT '',
        user_agent text NOT NULL DEFAULT '',
        url text NOT NULL DEFAULT '',
        referrer text NOT NULL DEFAULT '',
        order_id text NOT NULL DEFAULT '',
        promo_code text NOT NULL DEFAULT ''
    $cols$;
    exposure_columns constant text := $cols$
        tenant_id uuid NOT NULL,
        exposure_time timestamptz NOT NULL,
        receive_time timestamptz NOT NULL,
        campaign_id uuid NOT NULL,
        line_item_id uuid NOT NULL,
        placement_id uuid,
        podcast_id uuid,
        episode_id uuid,
        ad_slot_id uuid,
        source smallint NOT NULL CHECK (source IN (1, 2)),
        household_id bytea NOT NULL,
        exposure_id text NOT NULL,
        country_code text NOT NULL DEFAULT ''
    $cols$;
    spec record;
BEGIN
    FOR spec IN
        SELECT * FROM (VALUES
            ('site_events', site_event_columns, 'event_time', 'event_time, event_id'),
            ('exposures', exposure_columns, 'exposure_time', 'exposure_time, exposure_id')
        ) AS s (name, columns, time_column, order_by)
    LOOP
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
            EXECUTE format('CREATE TABLE %I (%s)', spec.name, spec.columns);
            PERFORM create_hypertable(spec.name::regclass, spec.time_column::name,
                                      chunk_time_interval => interval '1 day');
            EXECUTE format(
                'ALTER TABLE %I SET (timescaledb.compress, '
                'timescaledb.compress_segmentby = %L, timescaledb.compress_orderby = %L)',
                spec.name, 'tenant_id', spec.order_by);
            -- Late events stop arriving after the 5-minute future / retention checks;
            -- a week leaves room for resends after an outage.
            PERFORM add_compression_policy(spec.name::regclass, interval '7 days');
        ELSE
            EXECUTE format('CREATE TABLE %I (%s) PARTITION BY RANGE (%I)',
                           spec.name, spec.columns, spec.time_column);
        END IF;
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', spec.name);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', spec.name);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_tenant_id()) '
            'WITH CHECK (tenant_id = app_tenant_id())', spec.name);
        -- Append-only for the application; old days go as whole partitions.
        EXECUTE format('GRANT SELECT, INSERT ON %I TO podmesh_app', spec.name);
    END LOOP;
END
$$;

-- Reports read one sponsor's conversions and one campaign's exposures by time; both
-- meet on the household.
CREATE INDEX site_events_sponsor ON site_events (tenant_id, sponsor_id, event_time);
CREATE INDEX site_events_household ON site_events (tenant_id, household_id, event_time);
CREATE INDEX exposures_campaign ON exposures (tenant_id, campaign_id, exposure_time);
CREATE INDEX exposures_household ON exposures (tenant_id, household_id, exposure_time);

-- The idempotency keys, unique per tenant whatever the time (a partitioned table's
-- unique keys must include its partition column, and a browser resend carries a new
-- arrival time): kind 1 = site event id, 2 = purchase order id per sponsor
-- ("<sponsor uuid>/<order id>"), 3 = exposure id. Kept as long as the raw rows.
CREATE TABLE attribution_keys (
    tenant_id uuid NOT NULL,
    kind smallint NOT NULL CHECK (kind IN (1, 2, 3)),
    key text NOT NULL,
    event_time timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, kind, key)
);
CREATE INDEX attribution_keys_age ON attribution_keys (event_time);

-- COPY refuses tables with row-level security, so fast ingestion copies straight into a
-- day's partition, which has no policy: the application may only INSERT there, and
-- this statement trigger holds each COPY to the transaction's tenant, as the policy's
-- WITH CHECK does for inserts through the parent.
CREATE FUNCTION attribution_check_tenant() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
    AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM copied WHERE tenant_id IS DISTINCT FROM app_tenant_id()) THEN
        RAISE EXCEPTION 'new row violates row-level security policy for table "%"',
            TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END
$$;

-- The application role cannot create or drop tables, so partitions are managed by these
-- two functions, which run as the schema owner and do nothing else.

-- Creates the missing daily partitions of site_events or exposures covering
-- [p_first, p_last] (UTC dates); returns how many it created.
CREATE FUNCTION attribution_ensure_partitions(p_table text, p_first date, p_last date)
    RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
DECLARE
    day date;
    partition_name text;
    created integer := 0;
BEGIN
    IF p_table NOT IN ('site_events', 'exposures') THEN
        RAISE EXCEPTION 'not an attribution table: %', p_table;
    END IF;
    IF p_last < p_first OR p_last - p_first > 62 THEN
        RAISE EXCEPTION 'partition range % to % is empty or longer than 62 days', p_first, p_last;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN 0;
    END IF;
    FOR day IN SELECT generate_series(p_first, p_last, interval '1 day')::date LOOP
        partition_name := p_table || '_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(partition_name) IS NOT NULL;
        -- Concurrent creators queue here and find the partition made.
        PERFORM pg_advisory_xact_lock(hashtext('attribution_ensure_partitions'));
        CONTINUE WHEN to_regclass(partition_name) IS NOT NULL;
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
            partition_name, p_table,
            day::timestamp AT TIME ZONE 'UTC',
            (day + 1)::timestamp AT TIME ZONE 'UTC');
        EXECUTE format(
            'CREATE TRIGGER check_tenant AFTER INSERT ON %I REFERENCING NEW TABLE AS copied '
            'FOR EACH STATEMENT EXECUTE FUNCTION attribution_check_tenant()',
            partition_name);
        EXECUTE format('GRANT INSERT ON %I TO podmesh_app', partition_name);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

-- Drops the daily partitions of site_events or exposures that end before p_before (a
-- UTC date), with their idempotency keys, and returns the partitions' names. The floor
-- keeps a confused caller from emptying the tables.
CREATE FUNCTION attribution_drop_partitions(p_table text, p_before date)
    RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
DECLARE
    partition_name text;
BEGIN
    IF p_table NOT IN ('site_events', 'exposures') THEN
        RAISE EXCEPTION 'not an attribution table: %', p_table;
    END IF;
    IF p_before > (now() AT TIME ZONE 'UTC')::date - 30 THEN
        RAISE EXCEPTION 'raw events are kept for at least 30 days (asked to drop before %)',
            p_before;
    END IF;
    DELETE FROM attribution_keys
    WHERE kind = ANY (CASE p_table WHEN 'exposures' THEN '{3}'::smallint[] ELSE '{1,2}' END)
      AND event_time < p_before::timestamp AT TIME ZONE 'UTC';
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN QUERY SELECT drop_chunks(p_table::regclass,
                                        older_than => p_before::timestamp AT TIME ZONE 'UTC')::text;
        RETURN;
    END IF;
    FOR partition_name IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = p_table::regclass
          AND c.relname ~ ('^' || p_table || '_[0-9]{8}$')
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < p_before
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', partition_name);
        RETURN NEXT partition_name;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION attribution_ensure_partitions(text, date, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION attribution_drop_partitions(text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION attribution_ensure_partitions(text, date, date) TO podmesh_app;
GRANT EXECUTE ON FUNCTION attribution_drop_partitions(text, date) TO podmesh_app;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['pixels', 'attribution_keys'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_tenant_id()) '
            'WITH CHECK (tenant_id = app_tenant_id())', t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON pixels TO podmesh_app;
GRANT SELECT, INSERT ON attribution_keys TO podmesh_app;
