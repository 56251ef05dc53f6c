-- Pixels and site events, as the attribution service's sites package uses them.

-- The sponsor's web domain when the pixel was created or last changed (the campaign
-- service's; attribution only references sponsors): a pixel without allowed origins
-- accepts pages of that domain and its subdomains, checked on every event without a
-- call to the campaign service.
ALTER TABLE pixels ADD COLUMN sponsor_domain text NOT NULL DEFAULT ''
    CHECK (length(sponsor_domain) <= 253);

-- ListSiteEvents: a tenant's newest events first, whatever the sponsor.
CREATE INDEX site_events_recent ON site_events (tenant_id, event_time, event_id);

-- Pixel calls without a credential: a browser's TrackSiteEvents call names only pixel
-- ids, and row-level security hides every pixel until the tenant is known. This one
-- narrow lookup answers which tenant each of up to 500 pixel ids belongs to, and
-- nothing else; the pixel itself (state, allowed origins) is then read in the
-- tenant's own transaction. Pixel ids are random UUIDs, so the answer reveals nothing
-- to a caller who does not hold one, and the snippet already shows it.

-- FORCE applies row-level security to the owner too; the SECURITY DEFINER lookup below
-- runs as the owner and must see every tenant's pixels. The application role is not
-- the owner, so this policy never applies to it.
CREATE POLICY owner_lookup ON pixels FOR SELECT TO CURRENT_USER USING (true);

CREATE FUNCTION attribution_pixel_tenants(p_pixel_ids uuid[])
    RETURNS TABLE (pixel_id uuid, tenant_id uuid)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
BEGIN
    IF cardinality(p_pixel_ids) > 500 THEN
        RAISE EXCEPTION 'at most 500 pixel ids per lookup, not %', cardinality(p_pixel_ids);
    END IF;
    RETURN QUERY
        SELECT p.pixel_id, p.tenant_id FROM pixels p WHERE p.pixel_id = ANY (p_pixel_ids);
END
$$;

REVOKE ALL ON FUNCTION attribution_pixel_tenants(uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION attribution_pixel_tenants(uuid[]) TO podmesh_app;

-- Pixel ids are unique across tenants (server-made UUIDs); the lookup above reads by id.
CREATE UNIQUE INDEX pixels_by_id ON pixels (pixel_id);
