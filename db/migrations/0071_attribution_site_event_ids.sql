-- A site event with its own time is identified by its id and that time, unique per
-- tenant: the day partitions keep it themselves, so a resent event (same id, same
-- event_time) is refused by the index its row is written with, and the key goes with
-- its partition. attribution_keys keeps what a time cannot identify: events whose time
-- is their arrival (browser pixels send none, and a resend arrives later) and purchases'
-- orders per sponsor. Every stored event's id was unique per tenant until now (0060's
-- keys), so the index builds over existing rows.
CREATE UNIQUE INDEX site_events_event ON site_events (tenant_id, event_id, event_time);
