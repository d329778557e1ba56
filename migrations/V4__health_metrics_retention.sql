-- Retention of `health_metrics`: heartbeats with metrics add a row each, and
-- nothing removed them (7,878 rows in 12 s from one busy tenant). The server
-- keeps `HUB_METRICS_RETENTION_DAYS` days and prunes older rows in batches,
-- tenant by tenant, through this function.
--
-- Why a function and not a DELETE grant: the application role stays
-- append-only on `health_metrics` (it may insert and read its tenant's rows,
-- never delete them). The function deletes only rows of the tenant the
-- calling transaction is scoped to (`app.tenant_id`, filtered explicitly and
-- by row-level security, which binds the owner through FORCE), only rows
-- older than at least one day by the database's own clock, and at most
-- `max_rows` of them per call, so a caller can neither reach another tenant
-- nor wipe recent metrics, and each call is a short transaction.
-- `SECURITY DEFINER` with a fixed search_path ending in `pg_temp`: no
-- temporary object of the caller can stand in for a name used here.

-- Finds a tenant's oldest rows without scanning the tenant's services.
CREATE INDEX health_metrics_tenant_time_idx ON health_metrics (tenant_id, recorded_at);

CREATE FUNCTION hub_metrics_prune(keep_days INTEGER, max_rows INTEGER)
RETURNS BIGINT
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    tenant TEXT := NULLIF(pg_catalog.current_setting('app.tenant_id', true), '');
    pruned BIGINT;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'hub_metrics_prune runs in a tenant-scoped transaction (app.tenant_id is unset)';
    END IF;
    IF keep_days IS NULL OR keep_days < 1 OR max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'hub_metrics_prune keeps at least one day and deletes at least one row per call';
    END IF;
    WITH doomed AS (
        SELECT id FROM public.health_metrics
        WHERE tenant_id = tenant
          AND recorded_at < pg_catalog.now() - pg_catalog.make_interval(days => keep_days)
        ORDER BY recorded_at
        LIMIT max_rows
    ), gone AS (
        DELETE FROM public.health_metrics m USING doomed WHERE m.id = doomed.id RETURNING 1
    )
    SELECT pg_catalog.count(*) INTO pruned FROM gone;
    RETURN pruned;
END
$$;

REVOKE ALL ON FUNCTION hub_metrics_prune(INTEGER, INTEGER) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub_metrics_prune(INTEGER, INTEGER) TO central_hub_app;
