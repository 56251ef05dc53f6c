-- What a line item's bookings commit of the campaign's budget, kept on the line item:
-- the impression goals and the count of its booked, live and completed placements.
-- A booking's budget check reads a campaign's line items instead of summing all its
-- placements under the campaign's lock, which grew with every booking. A trigger keeps
-- both equal to that sum in the statement that changes a placement, whichever path
-- (booking, cancellation, release, deletion, the sweep) changes it.
ALTER TABLE line_items
    ADD COLUMN booked_goal bigint NOT NULL DEFAULT 0 CHECK (booked_goal >= 0),
    ADD COLUMN booked_placements integer NOT NULL DEFAULT 0 CHECK (booked_placements >= 0);

-- The owner is held to row-level security too (FORCE): lifted for the backfill only.
ALTER TABLE line_items NO FORCE ROW LEVEL SECURITY;
UPDATE line_items l
SET booked_goal = b.goal, booked_placements = b.n
FROM (
    SELECT tenant_id, line_item_id, sum(impression_goal) AS goal, count(*) AS n
    FROM placements WHERE state IN (2, 3, 4)
    GROUP BY tenant_id, line_item_id
) b
WHERE l.tenant_id = b.tenant_id AND l.line_item_id = b.line_item_id;
ALTER TABLE line_items FORCE ROW LEVEL SECURITY;

CREATE FUNCTION placements_count_booked() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.line_item_id = NEW.line_item_id
       AND (OLD.state IN (2, 3, 4)) = (NEW.state IN (2, 3, 4))
       AND (OLD.impression_goal = NEW.impression_goal OR NEW.state NOT IN (2, 3, 4)) THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' AND OLD.state IN (2, 3, 4) THEN
        UPDATE line_items
        SET booked_goal = booked_goal - OLD.impression_goal,
            booked_placements = booked_placements - 1
        WHERE tenant_id = OLD.tenant_id AND line_item_id = OLD.line_item_id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.state IN (2, 3, 4) THEN
        UPDATE line_items
        SET booked_goal = booked_goal + NEW.impression_goal,
            booked_placements = booked_placements + 1
        WHERE tenant_id = NEW.tenant_id AND line_item_id = NEW.line_item_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER placements_count_booked
    AFTER INSERT OR UPDATE OR DELETE ON placements
    FOR EACH ROW EXECUTE FUNCTION placements_count_booked();
