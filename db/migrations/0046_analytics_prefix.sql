-- Requests to the measurement prefix (GET|HEAD /e/{prefix}/{url}), as Envoy's gRPC
-- access log reports them to analytics (services/analytics/prefix). A redirect serves
-- no bytes, so these are counted by the prefix methodology and kept apart from the
-- byte-verified listener_requests: one download per listener, media URL and UTC day,
-- after the bot, HEAD, bytes=0-1 and duplicate filtering; no byte threshold.
CREATE TABLE prefix_requests (
    tenant_id uuid NOT NULL,
    -- Envoy's x-request-id: the idempotency key, so a resent log entry is a duplicate.
    request_id text NOT NULL CHECK (length(request_id) BETWEEN 1 AND 128),
    request_time timestamptz NOT NULL,
    -- The media URL redirected to, as requested (query string kept).
    media_url text NOT NULL,
    -- host/path of media_url: what a download is counted per.
    media_key text NOT NULL,
    -- Per-tenant HMACs of the client address (and User-Agent), never the address.
    listener_id bytea NOT NULL,
    household_id bytea NOT NULL,
    user_agent text NOT NULL,
    referer text NOT NULL,
    method text NOT NULL,
    range_header text NOT NULL,
    status integer NOT NULL,
    -- The FilterReason that kept it from counting, '' when it may count.
    filter_reason text NOT NULL,
    PRIMARY KEY (tenant_id, request_id)
);
CREATE INDEX prefix_requests_by_time ON prefix_requests (tenant_id, request_time);

-- The counted prefix downloads: the first countable request of a listener for a media
-- URL on a UTC day. The key makes the count exact under concurrent access log streams.
CREATE TABLE prefix_downloads (
    tenant_id uuid NOT NULL,
    day date NOT NULL,
    media_key text NOT NULL,
    listener_id bytea NOT NULL,
    request_id text NOT NULL,
    PRIMARY KEY (tenant_id, day, media_key, listener_id)
);

ALTER TABLE prefix_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE prefix_requests FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON prefix_requests
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, DELETE ON prefix_requests TO podmesh_app;

ALTER TABLE prefix_downloads ENABLE ROW LEVEL SECURITY;
ALTER TABLE prefix_downloads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON prefix_downloads
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, DELETE ON prefix_downloads TO podmesh_app;
