-- Analytics ingestion: raw listener requests (append-only, one partition per UTC day)
-- and the counting state of open windows. What counting produces is in 0030.

-- Raw requests as received, except the client IP: it arrives, is turned into listener
-- and household ids (HMAC per tenant) and the answer to the tenant's IP exclusions,
-- and is never stored. The primary key is the idempotency key: a resend carries the
-- same id and time. Fixed-width columns first, so rows pack without padding.
DO $$
DECLARE
    columns constant text := $cols$
        tenant_id uuid NOT NULL,
        request_time timestamptz NOT NULL,
        episode_id uuid NOT NULL,
        bytes_served bigint NOT NULL,
        status_code smallint NOT NULL,
        ip_excluded boolean NOT NULL,
        request_id text NOT NULL,
        listener_id bytea NOT NULL,
        household_id bytea NOT NULL,
        http_method text NOT NULL,
        range_header text NOT NULL,
        user_agent text NOT NULL,
        referer text NOT NULL,
        country_code text NOT NULL,
        region_code text NOT NULL,
        PRIMARY KEY (tenant_id, request_id, request_time)
    $cols$;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE format('CREATE TABLE listener_requests (%s)', columns);
        PERFORM create_hypertable('listener_requests', 'request_time',
                                  chunk_time_interval => interval '1 day');
        ALTER TABLE listener_requests SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'tenant_id',
            timescaledb.compress_orderby = 'request_time, request_id'
        );
        -- Days stop changing once their counting windows have closed and late
        -- requests have stopped arriving.
        PERFORM add_compression_policy('listener_requests', interval '3 days');
    ELSE
        EXECUTE format('CREATE TABLE listener_requests (%s) PARTITION BY RANGE (request_time)',
                       columns);
    END IF;
END
$$;

ALTER TABLE listener_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE listener_requests FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON listener_requests
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
-- Append-only for the application; old days go as whole partitions (below).
GRANT SELECT, INSERT ON listener_requests TO podmesh_app;

-- COPY refuses tables with row-level security, and COPY is what makes ingestion fast
-- (INSERT ... SELECT from a staging table runs at about two thirds of its speed). So
-- ingestion copies straight into a day's partition, which has no policy: the
-- application may only INSERT there (every read goes through listener_requests and
-- its policy), and this statement trigger holds each COPY to the transaction's
-- tenant, as the policy's WITH CHECK does for inserts through the parent.
CREATE FUNCTION listener_requests_check_tenant() RETURNS trigger
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

-- The application role cannot create or drop tables, so partitions are managed by
-- these two functions, which run as the schema owner and do nothing else.

-- Creates the missing daily partitions covering [p_first, p_last] (UTC dates) and
-- returns how many it created. On TimescaleDB, chunks appear by themselves.
CREATE FUNCTION analytics_ensure_request_partitions(p_first date, p_last date)
    RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
DECLARE
    day date;
    partition_name text;
    created integer := 0;
BEGIN
    IF p_last < p_first OR p_last - p_first > 62 THEN
        RAISE EXCEPTION 'partition range % to % is empty or longer than 62 days', p_first, p_last;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN 0;
    END IF;
    FOR day IN SELECT generate_series(p_first, p_last, interval '1 day')::date LOOP
        partition_name := 'listener_requests_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(partition_name) IS NOT NULL;
        -- Concurrent creators queue here and find the partition made.
        PERFORM pg_advisory_xact_lock(hashtext('analytics_ensure_request_partitions'));
        CONTINUE WHEN to_regclass(partition_name) IS NOT NULL;
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF listener_requests FOR VALUES FROM (%L) TO (%L)',
            partition_name,
            day::timestamp AT TIME ZONE 'UTC',
            (day + 1)::timestamp AT TIME ZONE 'UTC');
        EXECUTE format(
            'CREATE TRIGGER check_tenant AFTER INSERT ON %I REFERENCING NEW TABLE AS copied '
            'FOR EACH STATEMENT EXECUTE FUNCTION listener_requests_check_tenant()',
            partition_name);
        EXECUTE format('GRANT INSERT ON %I TO podmesh_app', partition_name);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

-- Drops the daily partitions that end before p_before (a UTC date) and returns their
-- names. Retention is platform-wide; the floor keeps a confused caller from emptying
-- the table.
CREATE FUNCTION analytics_drop_request_partitions(p_before date)
    RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
DECLARE
    partition_name text;
BEGIN
    IF p_before > (now() AT TIME ZONE 'UTC')::date - 30 THEN
        RAISE EXCEPTION 'raw requests are kept for at least 30 days (asked to drop before %)',
            p_before;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN QUERY SELECT drop_chunks('listener_requests',
                                        older_than => p_before::timestamp AT TIME ZONE 'UTC')::text;
        RETURN;
    END IF;
    FOR partition_name IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'listener_requests'::regclass
          AND c.relname ~ '^listener_requests_[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < p_before
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', partition_name);
        RETURN NEXT partition_name;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION analytics_ensure_request_partitions(date, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION analytics_drop_request_partitions(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION analytics_ensure_request_partitions(date, date) TO podmesh_app;
GRANT EXECUTE ON FUNCTION analytics_drop_request_partitions(date) TO podmesh_app;

-- What counting remembers about each open (listener, episode, counting window): the
-- union of bytes delivered, the first request, whether and how it was counted (see
-- services/analytics/ingest_state.py for the encoding). Windows are found by their
-- start: exactly for calendar days, by range for rolling 24 hours (every window of a
-- listener and episode that started within a day before a request).
CREATE TABLE counting_states (
    tenant_id uuid NOT NULL,
    episode_id uuid NOT NULL,
    listener_id bytea NOT NULL,
    window_start timestamptz NOT NULL,
    state bytea NOT NULL,
    PRIMARY KEY (tenant_id, episode_id, listener_id, window_start)
);

ALTER TABLE counting_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE counting_states FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON counting_states
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON counting_states TO podmesh_app;
-- The pruning function below runs as the owner, across tenants.
CREATE POLICY owner_prune ON counting_states FOR ALL TO CURRENT_USER USING (true);

-- Deletes the states of windows that started before p_before (all tenants) and returns
-- how many. Ingestion no longer counts requests for windows that closed before its
-- watermark, which the caller keeps later than p_before.
CREATE FUNCTION analytics_prune_counting_states(p_before timestamptz)
    RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        WITH gone AS (
            DELETE FROM counting_states
            -- Windows of the last two days are never pruned, whatever the caller says.
            WHERE window_start < least(p_before, now() - interval '2 days')
            RETURNING 1
        )
        SELECT count(*) FROM gone
    $$;
REVOKE ALL ON FUNCTION analytics_prune_counting_states(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION analytics_prune_counting_states(timestamptz) TO podmesh_app;

-- Ingestion deletes a download's ad deliveries itself before the download (rollups are
-- kept from exactly the rows deleted), so the cascade has nothing left to do, and the
-- key lookup it costs on every ad delivery written is better spent elsewhere.
ALTER TABLE ad_deliveries
    DROP CONSTRAINT ad_deliveries_tenant_id_episode_id_listener_id_window_star_fkey;

-- What GetCountRebuild reports beyond 0030's columns. update_time moves with every
-- counting day done: a rebuild whose update_time stands still was interrupted.
ALTER TABLE count_rebuilds
    ADD COLUMN podcast_id uuid,
    ADD COLUMN progress double precision NOT NULL DEFAULT 0,
    ADD COLUMN raw_requests_scanned bigint NOT NULL DEFAULT 0,
    ADD COLUMN update_time timestamptz NOT NULL DEFAULT now();

-- Rows every batch updates in place (a window's state, a day's counters): room on each
-- page lets PostgreSQL update them without touching their indexes (HOT updates).
ALTER TABLE counting_states SET (fillfactor = 80);
ALTER TABLE rollup_hourly SET (fillfactor = 80);
ALTER TABLE rollup_daily SET (fillfactor = 80);
ALTER TABLE rollup_daily_dimension SET (fillfactor = 80);
ALTER TABLE rollup_daily_ad_slot SET (fillfactor = 80);
ALTER TABLE listener_sketches SET (fillfactor = 80);

-- One more for every counting transaction of a tenant that commits (ingestion and
-- rebuilds alike). A transaction that counted ahead of the counting lock, on what the
-- transaction before it was writing, checks under the lock that nothing else counted
-- in between.
CREATE TABLE counting_versions (
    tenant_id uuid PRIMARY KEY,
    version bigint NOT NULL
);
ALTER TABLE counting_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE counting_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON counting_versions
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, UPDATE ON counting_versions TO podmesh_app;
