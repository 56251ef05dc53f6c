-- What a booking probes before it writes, as B-tree lookups: is one of the candidate
-- slots free over the flight, does a competitor run in the episode. The exclusion
-- constraints' GiST indexes (0050) answer the same questions and still decide races,
-- but a GiST search over random UUIDs visits many pages where a B-tree visits a few.
-- Their predicate spells the reserving states as a range (state is a small integer):
-- the probes say the same, which the GiST indexes' IN list cannot be proven from, so
-- the planner cannot pick those for a probe on a table whose statistics are young. For
-- the same reason the slot index holds only rows with a slot, which only the slot
-- probe can be proven to want.
CREATE INDEX placements_slot_running ON placements (tenant_id, ad_slot_id)
    WHERE state BETWEEN 2 AND 4 AND ad_slot_id IS NOT NULL;
CREATE INDEX placements_competitors_running
    ON placements (tenant_id, episode_id, competitive_key)
    WHERE state BETWEEN 2 AND 4 AND competitive_key <> '';
