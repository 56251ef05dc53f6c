-- Campaign service: sponsors, campaigns (insertion orders), line items, placements
-- on catalog ad slots, the deal pipeline, and the outbox that carries its audit
-- records to the tenant service.
--
-- Episodes, podcasts and ad slots are the catalog's: they are referenced by id only,
-- and what booking needs of them (byte range, podcast) is copied onto the placement.

-- Exclusion constraints on (tenant, slot, flight) need btree operators in GiST.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE sponsors (
    tenant_id uuid NOT NULL,
    sponsor_id uuid NOT NULL,
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    domain text NOT NULL DEFAULT '',
    iab_categories text[] NOT NULL DEFAULT '{}',
    competitive_category text NOT NULL DEFAULT '',
    -- What separation compares: case-insensitive, surrounding spaces ignored.
    competitive_key text GENERATED ALWAYS AS (lower(btrim(competitive_category))) STORED,
    contact_name text NOT NULL DEFAULT '',
    contact_email text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, sponsor_id)
);
CREATE INDEX sponsors_page ON sponsors (tenant_id, lower(display_name), sponsor_id);

CREATE TABLE campaigns (
    tenant_id uuid NOT NULL,
    campaign_id uuid NOT NULL,
    sponsor_id uuid NOT NULL,
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    state smallint NOT NULL CHECK (state BETWEEN 1 AND 5),
    currency_code text NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    budget_minor bigint NOT NULL CHECK (budget_minor >= 0),
    flight_start timestamptz NOT NULL,
    flight_end timestamptz NOT NULL,
    attribution_window_days integer NOT NULL DEFAULT 0
        CHECK (attribution_window_days BETWEEN 0 AND 90),
    attribution_model smallint NOT NULL DEFAULT 0,
    external_order_number text NOT NULL DEFAULT '',
    notes text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (flight_end > flight_start),
    PRIMARY KEY (tenant_id, campaign_id),
    FOREIGN KEY (tenant_id, sponsor_id) REFERENCES sponsors (tenant_id, sponsor_id)
);
CREATE INDEX campaigns_page ON campaigns (tenant_id, flight_start DESC, campaign_id DESC);
CREATE INDEX campaigns_sponsor ON campaigns (tenant_id, sponsor_id);
-- The completion sweep: live campaigns by flight end.
CREATE INDEX campaigns_running ON campaigns (flight_end) WHERE state IN (2, 3);

CREATE TABLE line_items (
    tenant_id uuid NOT NULL,
    line_item_id uuid NOT NULL,
    campaign_id uuid NOT NULL,
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    state smallint NOT NULL CHECK (state BETWEEN 1 AND 5),
    ad_type smallint NOT NULL CHECK (ad_type BETWEEN 1 AND 3),
    pricing_model smallint NOT NULL CHECK (pricing_model BETWEEN 1 AND 3),
    -- In the campaign's currency.
    rate_minor bigint NOT NULL CHECK (rate_minor >= 0),
    impression_goal bigint NOT NULL DEFAULT 0 CHECK (impression_goal >= 0),
    impression_cap bigint NOT NULL DEFAULT 0 CHECK (impression_cap >= 0),
    pacing_strategy smallint NOT NULL DEFAULT 2 CHECK (pacing_strategy BETWEEN 1 AND 3),
    priority smallint NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 10),
    flight_start timestamptz NOT NULL,
    flight_end timestamptz NOT NULL,
    targeting jsonb NOT NULL DEFAULT '{}',
    frequency_cap_max integer NOT NULL DEFAULT 0 CHECK (frequency_cap_max >= 0),
    frequency_cap_days integer NOT NULL DEFAULT 0 CHECK (frequency_cap_days >= 0),
    promo_code text NOT NULL DEFAULT '',
    vanity_url text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (flight_end > flight_start),
    PRIMARY KEY (tenant_id, line_item_id),
    FOREIGN KEY (tenant_id, campaign_id) REFERENCES campaigns (tenant_id, campaign_id)
        ON DELETE CASCADE
);
CREATE INDEX line_items_page ON line_items
    (tenant_id, campaign_id, priority, flight_start, line_item_id);
CREATE INDEX line_items_running ON line_items (flight_end) WHERE state IN (2, 3);

CREATE TABLE placements (
    tenant_id uuid NOT NULL,
    placement_id uuid NOT NULL,
    line_item_id uuid NOT NULL,
    campaign_id uuid NOT NULL,
    -- Copied from the campaign's sponsor at booking: competitive separation.
    sponsor_id uuid NOT NULL,
    competitive_key text NOT NULL DEFAULT '',
    episode_id uuid NOT NULL,
    podcast_id uuid NOT NULL,
    episode_publish_at timestamptz NOT NULL,
    ad_slot_id uuid,
    position smallint NOT NULL DEFAULT 0 CHECK (position BETWEEN 0 AND 3),
    start_byte bigint NOT NULL DEFAULT 0 CHECK (start_byte >= 0),
    end_byte bigint NOT NULL DEFAULT 0 CHECK (end_byte >= 0),
    state smallint NOT NULL CHECK (state BETWEEN 1 AND 5),
    impression_goal bigint NOT NULL DEFAULT 0 CHECK (impression_goal >= 0),
    -- The reserved flight; set when booked.
    flight tstzrange,
    makegood_for_line_item_id uuid,
    request_id text NOT NULL DEFAULT '',
    book_time timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, placement_id),
    FOREIGN KEY (tenant_id, line_item_id) REFERENCES line_items (tenant_id, line_item_id)
        ON DELETE CASCADE,
    CHECK (state = 1 OR (flight IS NOT NULL AND ad_slot_id IS NOT NULL)),
    -- One booking of a slot at any instant: the database decides the race between
    -- two concurrent bookings, so exactly one of them wins.
    CONSTRAINT placements_slot_taken EXCLUDE USING gist (
        tenant_id WITH =, ad_slot_id WITH =, flight WITH &&
    ) WHERE (state IN (2, 3, 4)),
    -- Competitive separation: two sponsors of one competitive category are never
    -- in one episode over overlapping flights.
    CONSTRAINT placements_competitive_conflict EXCLUDE USING gist (
        tenant_id WITH =, episode_id WITH =, competitive_key WITH =, sponsor_id WITH <>,
        flight WITH &&
    ) WHERE (state IN (2, 3, 4) AND competitive_key <> '')
);
CREATE UNIQUE INDEX placements_request_id ON placements (tenant_id, request_id)
    WHERE request_id <> '';
CREATE INDEX placements_line_item ON placements (tenant_id, line_item_id);
CREATE INDEX placements_campaign ON placements (tenant_id, campaign_id);
CREATE INDEX placements_page ON placements
    (tenant_id, episode_publish_at, position, placement_id);
CREATE INDEX placements_makegood ON placements (tenant_id, makegood_for_line_item_id)
    WHERE makegood_for_line_item_id IS NOT NULL;
CREATE INDEX placements_running ON placements (upper(flight)) WHERE state IN (2, 3);

CREATE TABLE deals (
    tenant_id uuid NOT NULL,
    deal_id uuid NOT NULL,
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    sponsor_id uuid NOT NULL,
    campaign_id uuid,
    stage smallint NOT NULL CHECK (stage BETWEEN 1 AND 11),
    amount_currency text NOT NULL DEFAULT '',
    amount_minor bigint NOT NULL DEFAULT 0 CHECK (amount_minor >= 0),
    owner_user_id text NOT NULL DEFAULT '',
    expected_close_at timestamptz,
    notes text NOT NULL DEFAULT '',
    stage_changed_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, deal_id),
    FOREIGN KEY (tenant_id, sponsor_id) REFERENCES sponsors (tenant_id, sponsor_id),
    FOREIGN KEY (tenant_id, campaign_id) REFERENCES campaigns (tenant_id, campaign_id)
);
CREATE INDEX deals_page ON deals (tenant_id, updated_at DESC, deal_id DESC);
CREATE INDEX deals_sponsor ON deals (tenant_id, sponsor_id);
CREATE INDEX deals_campaign ON deals (tenant_id, campaign_id) WHERE campaign_id IS NOT NULL;

CREATE TABLE deal_events (
    tenant_id uuid NOT NULL,
    deal_event_id uuid NOT NULL,
    deal_id uuid NOT NULL,
    from_stage smallint NOT NULL,
    to_stage smallint NOT NULL,
    event_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_type text NOT NULL,
    actor_id text NOT NULL DEFAULT '',
    note text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, deal_event_id),
    FOREIGN KEY (tenant_id, deal_id) REFERENCES deals (tenant_id, deal_id) ON DELETE CASCADE
);
CREATE INDEX deal_events_page ON deal_events (tenant_id, deal_id, event_time, deal_event_id);

-- Audit records of campaign changes, written in the transaction of the change and
-- relayed to the tenant service's audit log (idempotent by event id).
CREATE TABLE campaign_audit_outbox (
    tenant_id uuid NOT NULL,
    event_id uuid NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_type text NOT NULL,
    actor_id text NOT NULL DEFAULT '',
    method text NOT NULL,
    resource_type text NOT NULL,
    resource_id text NOT NULL,
    request_id text NOT NULL DEFAULT '',
    details jsonb NOT NULL DEFAULT '{}',
    relayed_at timestamptz,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX campaign_audit_outbox_pending ON campaign_audit_outbox (occurred_at)
    WHERE relayed_at IS NULL;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'sponsors', 'campaigns', 'line_items', 'placements', 'deals', 'deal_events',
        'campaign_audit_outbox'
    ] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_tenant_id()) '
            'WITH CHECK (tenant_id = app_tenant_id())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO podmesh_app', t);
    END LOOP;
END
$$;

-- Background jobs find their work across tenants through these owner-run functions,
-- which return tenant ids only; the work itself runs in each tenant's transaction.
CREATE POLICY owner_lookup ON campaigns FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY owner_lookup ON line_items FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY owner_lookup ON placements FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY owner_lookup ON campaign_audit_outbox FOR SELECT TO CURRENT_USER USING (true);

-- Tenants with a campaign, line item or placement whose state the clock has changed:
-- flights that ended while running, bookings whose flight started.
CREATE FUNCTION campaign_sweep_tenants(p_now timestamptz)
    RETURNS TABLE (tenant_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT c.tenant_id FROM campaigns c WHERE c.state IN (2, 3) AND c.flight_end <= p_now
        UNION
        SELECT l.tenant_id FROM line_items l WHERE l.state IN (2, 3) AND l.flight_end <= p_now
        UNION
        SELECT p.tenant_id FROM placements p
        WHERE p.state IN (2, 3) AND upper(p.flight) <= p_now
        UNION
        SELECT p.tenant_id FROM placements p
        JOIN line_items l ON l.tenant_id = p.tenant_id AND l.line_item_id = p.line_item_id
        JOIN campaigns c ON c.tenant_id = p.tenant_id AND c.campaign_id = p.campaign_id
        WHERE p.state = 2 AND lower(p.flight) <= p_now AND l.state = 2 AND c.state = 2
    $$;

-- Tenants with audit records not yet relayed.
CREATE FUNCTION campaign_outbox_tenants()
    RETURNS TABLE (tenant_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT DISTINCT tenant_id FROM campaign_audit_outbox WHERE relayed_at IS NULL $$;

REVOKE ALL ON FUNCTION campaign_sweep_tenants(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION campaign_outbox_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION campaign_sweep_tenants(timestamptz) TO podmesh_app;
GRANT EXECUTE ON FUNCTION campaign_outbox_tenants() TO podmesh_app;
