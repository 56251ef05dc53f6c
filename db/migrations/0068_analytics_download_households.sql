-- The household of each counted download: the keyed hash of its normalised IP, as on
-- its raw requests and ad deliveries. Attribution's lift takes as its control group
-- the households that downloaded a campaign's podcasts in the period without its ads
-- (AnalyticsService.ListPodcastHouseholds reads them), so a download must say whose
-- it was. Counting sets it from the download's first request.
ALTER TABLE downloads ADD COLUMN household_id bytea;

-- Downloads counted before: a listener id derives from the IP, so every request and
-- ad delivery of one download has the same household. Taken from the ad deliveries,
-- then from the raw requests still retained; downloads with neither left stay NULL
-- and belong to no control group. The owner is subject to the tables' forced
-- row-level security like everyone (it would see no row), so it is lifted for this
-- transaction only.
ALTER TABLE downloads NO FORCE ROW LEVEL SECURITY;
ALTER TABLE ad_deliveries NO FORCE ROW LEVEL SECURITY;
ALTER TABLE listener_requests NO FORCE ROW LEVEL SECURITY;

UPDATE downloads d SET household_id = a.household_id
FROM ad_deliveries a
WHERE a.tenant_id = d.tenant_id AND a.episode_id = d.episode_id
    AND a.listener_id = d.listener_id AND a.window_start = d.window_start;

UPDATE downloads d SET household_id = r.household_id
FROM listener_requests r
WHERE d.household_id IS NULL AND r.tenant_id = d.tenant_id
    AND r.episode_id = d.episode_id AND r.listener_id = d.listener_id;

ALTER TABLE downloads FORCE ROW LEVEL SECURITY;
ALTER TABLE ad_deliveries FORCE ROW LEVEL SECURITY;
ALTER TABLE listener_requests FORCE ROW LEVEL SECURITY;

-- The distinct households of some podcasts over a period, read from the index alone.
CREATE INDEX downloads_households_by_podcast
    ON downloads (tenant_id, podcast_id, download_time) INCLUDE (household_id);
