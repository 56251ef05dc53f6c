-- Billing (tenant service): each tenant's plan and Stripe subscription, the Stripe
-- events already applied, the requests already answered, and the usage ledger.

CREATE TABLE billing_accounts (
    tenant_id uuid PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    plan text NOT NULL DEFAULT 'free',
    -- 'none' (never subscribed), 'active', 'past_due', 'canceled'.
    subscription_state text NOT NULL DEFAULT 'none'
        CHECK (subscription_state IN ('none', 'active', 'past_due', 'canceled')),
    stripe_customer_id text UNIQUE,
    stripe_subscription_id text UNIQUE,
    -- A downgrade waiting for the end of the paid period.
    pending_plan text,
    current_period_start timestamptz,
    current_period_end timestamptz,
    past_due_since timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Each billing request id answered once: a retried RPC finds its first answer here.
CREATE TABLE billing_requests (
    tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    request_id text NOT NULL,
    operation text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, request_id)
);

-- Stripe events applied, by id: a redelivered event changes nothing.
CREATE TABLE billing_stripe_events (
    tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    event_id text NOT NULL,
    event_type text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);

-- Usage recorded for Stripe, one row per (tenant, period, sequence); `reported_at`
-- is set only once Stripe has it, under the row's own idempotency key.
CREATE TABLE billing_usage (
    tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    period_start date NOT NULL,
    sequence integer NOT NULL CHECK (sequence > 0),
    -- The analytics count of the period when this row was recorded.
    counted_total bigint NOT NULL CHECK (counted_total >= 0),
    events bigint NOT NULL CHECK (events > 0),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    reported_at timestamptz,
    stripe_reference text,
    PRIMARY KEY (tenant_id, period_start, sequence)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['billing_accounts', 'billing_requests',
                             'billing_stripe_events', 'billing_usage'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_tenant_id())'
                       ' WITH CHECK (tenant_id = app_tenant_id())', t);
    END LOOP;
END $$;

CREATE POLICY owner_lookup ON billing_accounts FOR SELECT TO CURRENT_USER USING (true);

GRANT SELECT, INSERT, UPDATE ON billing_accounts, billing_usage TO podmesh_app;
GRANT SELECT, INSERT ON billing_requests, billing_stripe_events TO podmesh_app;

-- The tenant a Stripe customer belongs to: a webhook names only the customer.
CREATE FUNCTION billing_tenant_for_customer(p_customer text)
    RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT tenant_id FROM billing_accounts WHERE stripe_customer_id = p_customer $$;

-- Tenants with usage to record or report, for the usage job.
CREATE FUNCTION billing_tenants_with_subscription()
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT tenant_id FROM billing_accounts
        WHERE stripe_subscription_id IS NOT NULL AND plan <> 'free'
    $$;

REVOKE ALL ON FUNCTION billing_tenant_for_customer(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION billing_tenants_with_subscription() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing_tenant_for_customer(text) TO podmesh_app;
GRANT EXECUTE ON FUNCTION billing_tenants_with_subscription() TO podmesh_app;
