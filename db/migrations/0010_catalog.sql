-- Catalog service: podcasts, episodes (with their ad slots), and the per-podcast
-- term counts behind keyword extraction and typo-tolerant search.
--
-- No foreign key reaches the tenant service's tables: each service owns its own.

CREATE EXTENSION IF NOT EXISTS pg_trgm;
-- Lets GIN indexes lead with tenant_id, so one tenant's search never walks the
-- posting lists of every other tenant.
CREATE EXTENSION IF NOT EXISTS btree_gin;

CREATE TABLE podcasts (
    tenant_id uuid NOT NULL,
    podcast_id uuid NOT NULL,
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 1000),
    author text NOT NULL DEFAULT '',
    description text NOT NULL DEFAULT '',
    categories text[] NOT NULL DEFAULT '{}',
    -- Lower-case category names plus their parents ("business/marketing",
    -- "business"), so a filter on a parent also finds its subcategories.
    category_keys text[] NOT NULL DEFAULT '{}',
    language text NOT NULL DEFAULT '',
    feed_url text NOT NULL DEFAULT '',
    artwork_url text NOT NULL DEFAULT '',
    website_url text NOT NULL DEFAULT '',
    owner_name text NOT NULL DEFAULT '',
    owner_email text NOT NULL DEFAULT '',
    explicit boolean NOT NULL DEFAULT false,
    podcast_type smallint NOT NULL DEFAULT 0 CHECK (podcast_type BETWEEN 0 AND 2),
    podcast_guid text NOT NULL DEFAULT '',
    -- Term counts of the podcast's own title and description (see podcast_terms).
    text_terms jsonb NOT NULL DEFAULT '{}',
    -- [{"text": ..., "weight": ...}], heaviest first; recomputed after every change.
    keywords jsonb NOT NULL DEFAULT '[]',
    -- Kept current by the same writes that change episodes, so reads stay one row.
    episode_count integer NOT NULL DEFAULT 0 CHECK (episode_count >= 0),
    latest_publish_at timestamptz,
    last_import_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- The default parser already skips HTML tags and entities in descriptions.
    search_vector tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', author), 'B')
        || setweight(to_tsvector('english', description), 'C')
    ) STORED,
    PRIMARY KEY (tenant_id, podcast_id)
);
CREATE UNIQUE INDEX podcasts_feed_url ON podcasts (tenant_id, feed_url) WHERE feed_url <> '';
CREATE UNIQUE INDEX podcasts_guid ON podcasts (tenant_id, podcast_guid) WHERE podcast_guid <> '';
CREATE INDEX podcasts_page ON podcasts (tenant_id, lower(title), podcast_id);
CREATE INDEX podcasts_categories ON podcasts USING gin (tenant_id, category_keys);
CREATE INDEX podcasts_search ON podcasts USING gin (tenant_id, search_vector);
CREATE INDEX podcasts_title_trgm ON podcasts USING gin (tenant_id, title gin_trgm_ops);

CREATE TABLE episodes (
    tenant_id uuid NOT NULL,
    episode_id uuid NOT NULL,
    podcast_id uuid NOT NULL,
    guid text NOT NULL CHECK (length(guid) BETWEEN 1 AND 2000),
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 1000),
    description text NOT NULL DEFAULT '',
    publish_at timestamptz,
    -- Paging key for "newest first": episodes without a publish time come last.
    list_at timestamptz GENERATED ALWAYS AS (coalesce(publish_at, '-infinity')) STORED,
    media_url text NOT NULL,
    -- media_url without scheme, query, fragment, default port and measurement
    -- prefixes: what listener requests are matched on.
    normalized_media_url text NOT NULL,
    media_type text NOT NULL DEFAULT '',
    media_size_bytes bigint NOT NULL DEFAULT 0 CHECK (media_size_bytes >= 0),
    duration_ms bigint CHECK (duration_ms >= 0),
    bitrate_bps integer NOT NULL DEFAULT 0 CHECK (bitrate_bps >= 0),
    bitrate_derived boolean NOT NULL DEFAULT false,
    id3_size_bytes bigint CHECK (id3_size_bytes >= 0),
    season_number integer NOT NULL DEFAULT 0 CHECK (season_number >= 0),
    episode_number integer NOT NULL DEFAULT 0 CHECK (episode_number >= 0),
    episode_type smallint NOT NULL DEFAULT 0 CHECK (episode_type BETWEEN 0 AND 3),
    explicit boolean NOT NULL DEFAULT false,
    artwork_url text NOT NULL DEFAULT '',
    transcript text NOT NULL DEFAULT '',
    transcript_url text NOT NULL DEFAULT '',
    -- Slots live with their episode: they are always read and replaced together,
    -- and the resolve path gets them from the same single-row probe.
    ad_slots jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(ad_slots) = 'array'),
    -- What this episode adds to podcast_terms, so that a change can subtract it.
    text_terms jsonb NOT NULL DEFAULT '{}',
    transcript_terms jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    search_vector tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', description), 'C')
        || setweight(to_tsvector('english', transcript), 'D')
    ) STORED,
    PRIMARY KEY (tenant_id, episode_id),
    FOREIGN KEY (tenant_id, podcast_id) REFERENCES podcasts (tenant_id, podcast_id)
        ON DELETE CASCADE,
    CONSTRAINT episodes_guid_key UNIQUE (tenant_id, podcast_id, guid),
    -- Also the resolve index: a listener request's URL is one probe of it.
    CONSTRAINT episodes_media_url_key UNIQUE (tenant_id, normalized_media_url)
);
CREATE INDEX episodes_page ON episodes (tenant_id, podcast_id, list_at DESC, episode_id DESC);
CREATE INDEX episodes_search ON episodes USING gin (tenant_id, search_vector);
CREATE INDEX episodes_title_trgm ON episodes USING gin (tenant_id, title gin_trgm_ops);

-- Each podcast's vocabulary: how often each word (and title/description phrase)
-- occurs in its own text and its episodes'. The term frequencies and document
-- frequencies of TF-IDF, and the lexicon that misspelled search words are
-- matched against.
CREATE TABLE podcast_terms (
    tenant_id uuid NOT NULL,
    podcast_id uuid NOT NULL,
    term text NOT NULL,
    occurrences integer NOT NULL CHECK (occurrences >= 0),
    PRIMARY KEY (tenant_id, podcast_id, term),
    FOREIGN KEY (tenant_id, podcast_id) REFERENCES podcasts (tenant_id, podcast_id)
        ON DELETE CASCADE
);
CREATE INDEX podcast_terms_top ON podcast_terms (tenant_id, podcast_id, occurrences DESC);
CREATE INDEX podcast_terms_df ON podcast_terms (tenant_id, term);
CREATE INDEX podcast_terms_trgm ON podcast_terms USING gin (tenant_id, term gin_trgm_ops);

ALTER TABLE podcasts ENABLE ROW LEVEL SECURITY;
ALTER TABLE podcasts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON podcasts
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE episodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE episodes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON episodes
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE podcast_terms ENABLE ROW LEVEL SECURITY;
ALTER TABLE podcast_terms FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON podcast_terms
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

GRANT SELECT, INSERT, UPDATE, DELETE ON podcasts, episodes, podcast_terms TO podmesh_app;

-- Search. Row-level security keeps operators that are not LEAKPROOF (@@ of
-- full-text search, % and <% of pg_trgm) out of index scans, since they would
-- see other tenants' rows before the policy filters them: under RLS a search
-- would read every row of the tenant. These functions find the matching ids
-- with the GIN indexes instead. They run as the owner, filter on app_tenant_id()
-- themselves (the very setting the policies use), return ids and words only,
-- and the caller reads the rows themselves under RLS.
CREATE POLICY owner_lookup ON podcasts FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY owner_lookup ON episodes FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY owner_lookup ON podcast_terms FOR SELECT TO CURRENT_USER USING (true);

-- Podcasts whose title, author or description match the words (as typed in
-- p_query, or with corrected spellings in p_fuzzy, a to_tsquery() expression) or
-- whose title resembles p_query (pg_trgm word similarity). One branch per index:
-- the planner does not split "tenant AND (a OR b OR c)" across the GIN indexes.
CREATE FUNCTION catalog_podcast_matches(p_query text, p_fuzzy text)
    RETURNS TABLE (podcast_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT podcast_id FROM podcasts
        WHERE tenant_id = app_tenant_id()
          AND search_vector @@ websearch_to_tsquery('english', p_query)
        UNION
        SELECT podcast_id FROM podcasts
        WHERE tenant_id = app_tenant_id() AND search_vector @@ to_tsquery('english', p_fuzzy)
        UNION
        SELECT podcast_id FROM podcasts WHERE tenant_id = app_tenant_id() AND p_query <% title
    $$;

-- The same for episodes' titles, descriptions and transcripts.
CREATE FUNCTION catalog_episode_matches(p_query text, p_fuzzy text)
    RETURNS TABLE (episode_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT episode_id FROM episodes
        WHERE tenant_id = app_tenant_id()
          AND search_vector @@ websearch_to_tsquery('english', p_query)
        UNION
        SELECT episode_id FROM episodes
        WHERE tenant_id = app_tenant_id() AND search_vector @@ to_tsquery('english', p_fuzzy)
        UNION
        SELECT episode_id FROM episodes WHERE tenant_id = app_tenant_id() AND p_query <% title
    $$;

-- For each word the tenant's vocabulary lacks, the most similar words it has.
CREATE FUNCTION catalog_similar_terms(p_words text[], p_limit integer)
    RETURNS TABLE (word text, term text, similarity real)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT w.word, alt.term, alt.similarity
        FROM unnest(p_words) AS w(word)
        CROSS JOIN LATERAL (
            SELECT t.term, max(similarity(t.term, w.word)) AS similarity
            FROM podcast_terms t
            WHERE t.tenant_id = app_tenant_id() AND t.term % w.word
              AND strpos(t.term, ' ') = 0
            GROUP BY t.term
            ORDER BY 2 DESC, t.term
            LIMIT p_limit
        ) alt
        WHERE NOT EXISTS (
            SELECT 1 FROM podcast_terms e WHERE e.tenant_id = app_tenant_id() AND e.term = w.word
        )
    $$;

REVOKE ALL ON FUNCTION catalog_podcast_matches(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION catalog_episode_matches(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION catalog_similar_terms(text[], integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION catalog_podcast_matches(text, text) TO podmesh_app;
GRANT EXECUTE ON FUNCTION catalog_episode_matches(text, text) TO podmesh_app;
GRANT EXECUTE ON FUNCTION catalog_similar_terms(text[], integer) TO podmesh_app;
