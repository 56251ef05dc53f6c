-- The counting funnel (GetCountingFunnel): where every listener request ended up, per
-- episode and day, kept in the counting transaction with the downloads it explains
-- (services/analytics/funnel_rollup.py). A request is in the row of its request
-- time's day ('UTC' rows, and 'local' rows in the tenant's time zone when that is not
-- UTC, as rollup_daily); a counting window's first request is its download or its
-- below-threshold window, so the 'download' rows sum to rollup_daily's downloads.
-- counting_day is the day of the counting window's calendar (the tenant's day for
-- TENANT_DAY windows, else the UTC day) the request's time falls in: RebuildCounts
-- replaces a counting day's rows, and only those, so that it never needs the
-- requests of neighbouring days.
CREATE TABLE counting_funnel (
    tenant_id uuid NOT NULL,
    zone text NOT NULL CHECK (zone IN ('UTC', 'local')),
    day date NOT NULL,
    episode_id uuid NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('duplicate', 'filtered', 'late',
        'below_threshold', 'window_repeat', 'download')),
    -- The FilterReason value for 'filtered' rows, '' otherwise.
    reason text NOT NULL,
    counting_day date NOT NULL,
    podcast_id uuid NOT NULL,
    requests bigint NOT NULL,
    PRIMARY KEY (tenant_id, zone, day, episode_id, outcome, reason, counting_day),
    CHECK ((outcome = 'filtered') = (reason <> ''))
);
-- What a rebuild replaces: one counting day of some episodes.
CREATE INDEX counting_funnel_by_counting_day
    ON counting_funnel (tenant_id, episode_id, counting_day);
-- A podcast's or an episode's funnel without reading every episode's.
CREATE INDEX counting_funnel_by_podcast
    ON counting_funnel (tenant_id, zone, podcast_id, day);
CREATE INDEX counting_funnel_by_episode
    ON counting_funnel (tenant_id, zone, episode_id, day);

ALTER TABLE counting_funnel ENABLE ROW LEVEL SECURITY;
ALTER TABLE counting_funnel FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON counting_funnel
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON counting_funnel TO podmesh_app;
