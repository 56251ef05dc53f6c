-- Campaign pacing reads one ad slot's days at a time (CountAdDeliveries): an index
-- led by the slot turns each into one short range scan instead of a scan of every
-- slot's rows over the flight's days.
CREATE INDEX IF NOT EXISTS rollup_daily_ad_slot_by_slot
    ON rollup_daily_ad_slot (tenant_id, zone, ad_slot_id, day) INCLUDE (ads_delivered);
