-- Exposures from analytics follow its counts: a delivery a recount or rebuild takes
-- away is taken away here too, with its idempotency key, so the same delivery counted
-- again later is stored again. Only these rows are ever deleted by the application
-- (services/attribution/exposures/repository.py); old days still go whole.
GRANT DELETE ON exposures TO podmesh_app;
GRANT DELETE ON attribution_keys TO podmesh_app;

-- ListExposures pages newest first per tenant, and by line item or household.
CREATE INDEX exposures_page ON exposures (tenant_id, exposure_time DESC, exposure_id DESC);
CREATE INDEX exposures_line_item ON exposures (tenant_id, line_item_id, exposure_time);
