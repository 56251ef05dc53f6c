-- Tenant service: tenants, users, API keys, audit log.

CREATE TABLE tenants (
    tenant_id uuid PRIMARY KEY,
    slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$'),
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    state smallint NOT NULL DEFAULT 1,
    time_zone text NOT NULL DEFAULT 'UTC',
    counting_window smallint NOT NULL DEFAULT 1,
    attribution_window_days integer NOT NULL DEFAULT 30
        CHECK (attribution_window_days BETWEEN 1 AND 90),
    max_users integer NOT NULL DEFAULT 0 CHECK (max_users >= 0),
    max_api_keys integer NOT NULL DEFAULT 0 CHECK (max_api_keys >= 0),
    monthly_events bigint NOT NULL DEFAULT 0 CHECK (monthly_events >= 0),
    api_key_requests_per_second integer NOT NULL DEFAULT 0
        CHECK (api_key_requests_per_second >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    email text NOT NULL CHECK (email = lower(email)),
    display_name text NOT NULL DEFAULT '',
    role smallint NOT NULL CHECK (role BETWEEN 1 AND 4),
    password_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz,
    PRIMARY KEY (tenant_id, user_id),
    UNIQUE (tenant_id, email)
);
CREATE INDEX users_page ON users (tenant_id, created_at, user_id);

CREATE TABLE api_keys (
    tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    api_key_id uuid NOT NULL,
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    scopes text[] NOT NULL CHECK (cardinality(scopes) > 0),
    prefix text NOT NULL,
    secret_hash bytea NOT NULL UNIQUE,
    created_by_type text NOT NULL,
    created_by_id text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz,
    expires_at timestamptz,
    PRIMARY KEY (tenant_id, api_key_id)
);
CREATE INDEX api_keys_page ON api_keys (tenant_id, created_at DESC, api_key_id DESC);

CREATE TABLE audit_events (
    tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    event_id uuid NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_type text NOT NULL,
    actor_id text NOT NULL DEFAULT '',
    method text NOT NULL,
    resource_type text NOT NULL,
    resource_id text NOT NULL,
    request_id text NOT NULL DEFAULT '',
    details jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX audit_events_page ON audit_events (tenant_id, occurred_at DESC, event_id DESC);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_events
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

-- FORCE applies row-level security to the owner too; the SECURITY DEFINER lookups
-- below run as the owner and must see every tenant's keys. The application role
-- is not the owner, so these policies never apply to it.
CREATE POLICY owner_lookup ON tenants FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY owner_lookup ON api_keys FOR SELECT TO CURRENT_USER USING (true);

GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, users, api_keys TO podmesh_app;
-- The audit log is append-only for the application.
GRANT SELECT, INSERT ON audit_events TO podmesh_app;

-- The narrow cross-tenant paths. Each answers one question for one credential and
-- runs as the owner; the application cannot read other tenants' rows otherwise.

-- Which tenant and scopes an API key (by its SHA-256) belongs to.
CREATE FUNCTION auth_lookup_api_key(p_secret_hash bytea)
    RETURNS TABLE (
        tenant_id uuid, api_key_id uuid, scopes text[],
        revoked_at timestamptz, expires_at timestamptz, tenant_state smallint
    )
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT k.tenant_id, k.api_key_id, k.scopes, k.revoked_at, k.expires_at, t.state
        FROM api_keys k JOIN tenants t USING (tenant_id)
        WHERE k.secret_hash = p_secret_hash
    $$;

-- The tenant a sign-in names by slug.
CREATE FUNCTION auth_tenant_for_slug(p_slug text)
    RETURNS TABLE (tenant_id uuid, tenant_state smallint)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT tenant_id, state FROM tenants WHERE slug = p_slug $$;

-- Tenants in creation order, for the platform administrator's listing.
CREATE FUNCTION platform_list_tenants(
    p_after_created timestamptz, p_after_id uuid, p_limit integer
)
    RETURNS SETOF tenants
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT * FROM tenants
        WHERE p_after_created IS NULL OR (created_at, tenant_id) > (p_after_created, p_after_id)
        ORDER BY created_at, tenant_id
        LIMIT p_limit
    $$;

REVOKE ALL ON FUNCTION auth_lookup_api_key(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION auth_tenant_for_slug(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION platform_list_tenants(timestamptz, uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_lookup_api_key(bytea) TO podmesh_app;
GRANT EXECUTE ON FUNCTION auth_tenant_for_slug(text) TO podmesh_app;
GRANT EXECUTE ON FUNCTION platform_list_tenants(timestamptz, uuid, integer) TO podmesh_app;
