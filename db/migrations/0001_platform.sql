-- Platform-wide setup shared by every service's tables.

-- The application role may use the schema but never create objects in it.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO podmesh_app;

-- TimescaleDB when the server offers it (and preloads it); the time-series
-- migrations fall back to native partitioning when it is absent.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'timescaledb is installed but cannot be created here (%): using native partitions', SQLERRM;
        END;
    END IF;
END
$$;

-- The tenant of the current transaction, NULL when none is set. NULLIF matters:
-- once a transaction-local setting ends, the variable reads as '' rather than NULL.
CREATE OR REPLACE FUNCTION app_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid $$;
GRANT EXECUTE ON FUNCTION app_tenant_id() TO podmesh_app;
