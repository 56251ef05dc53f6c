-- Access tokens carry their user's token version. Changing the user's role bumps it
-- (and removing the user removes it), so tokens issued before stop working at once in
-- the tenant service and, within the verification cache, everywhere else.
ALTER TABLE users ADD COLUMN token_version integer NOT NULL DEFAULT 1 CHECK (token_version > 0);
