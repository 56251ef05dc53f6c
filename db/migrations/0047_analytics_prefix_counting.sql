-- Prefix requests counted into the tenant's reports (services/analytics/prefix): each
-- request's media URL is resolved to the tenant's episode through the catalog, and
-- the first countable request of a listener for an episode on a UTC day is a prefix
-- download. Prefix numbers have cubes of their own, so that no report ever adds them
-- to byte-verified numbers.

-- NULL: the URL matches no episode of the tenant (stored, never counted), or the
-- request was stored before requests were resolved.
ALTER TABLE prefix_requests ADD COLUMN episode_id uuid, ADD COLUMN podcast_id uuid;

-- One download per listener, episode and UTC day (chained or differently written URLs
-- of one episode are one download). Downloads stored before requests were resolved
-- have no episode and are in no report.
ALTER TABLE prefix_downloads ADD COLUMN episode_id uuid, ADD COLUMN podcast_id uuid,
    ADD COLUMN download_time timestamptz;
CREATE UNIQUE INDEX prefix_downloads_per_episode
    ON prefix_downloads (tenant_id, day, episode_id, listener_id);

-- Prefix downloads per hour, episode and breakdown dimension, as rollup_hourly holds
-- byte-verified ones (country is always '': the access log carries none).
CREATE TABLE prefix_rollup_hourly (
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

-- Where every prefix request ended up, per hour of its request time: the prefix
-- counting funnel. Requests that match no episode are kept under the nil uuid.
CREATE TABLE prefix_funnel_hourly (
    tenant_id uuid NOT NULL,
    hour timestamptz NOT NULL,
    episode_id uuid NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('duplicate', 'filtered', 'unmatched',
        'window_repeat', 'download')),
    -- The FilterReason value for 'filtered' rows, '' otherwise.
    reason text NOT NULL,
    podcast_id uuid NOT NULL,
    requests bigint NOT NULL,
    PRIMARY KEY (tenant_id, hour, episode_id, outcome, reason),
    CHECK ((outcome = 'filtered') = (reason <> ''))
);

ALTER TABLE prefix_rollup_hourly ENABLE ROW LEVEL SECURITY;
ALTER TABLE prefix_rollup_hourly FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON prefix_rollup_hourly
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON prefix_rollup_hourly TO podmesh_app;

ALTER TABLE prefix_funnel_hourly ENABLE ROW LEVEL SECURITY;
ALTER TABLE prefix_funnel_hourly FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON prefix_funnel_hourly
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON prefix_funnel_hourly TO podmesh_app;
