-- Central Hub schema, version 6: tenants as records (state and limits), API
-- keys with scopes, the admin audit, usage per tenant per day, and the
-- instance quota check of a registration.
--
-- 1. `hub_tenants` gains a display name, a state (`active`, `suspended`),
--    its own limits (NULL = the configured default) and `updated_at`;
--    `first_seen` becomes `created_at`. Every existing row stays, as an
--    active tenant named after its id. The table stays without row-level
--    security: the lease reaper lists tenants before it is acting for any of
--    them, and operators list every tenant. That is no leak: it holds ids,
--    names, states and limits only (no tenant data), and the only routes
--    that list it are operator-only. The application role gets UPDATE and
--    DELETE on it for the admin API (suspend, change limits, delete).
-- 2. `hub_api_keys`: keys held as SHA-256 digests, under row-level security
--    like every tenant table (ENABLE and FORCE, policy `tenant_isolation`).
--    A key is presented before its tenant is known, so the application role
--    finds it by digest only through `hub_key_grant(digest)`, a SECURITY
--    DEFINER function that answers that one key's id, tenant, scopes, expiry
--    and revocation: it never gets SELECT on other tenants' keys.
-- 3. `hub_admin_audit`: every admin change, under row-level security; the
--    application may read and append its tenant's rows, never change or
--    delete them. Rows older than the retention are pruned through
--    `hub_audit_prune(cutoff, max_rows)`, which deletes by age only and never
--    rows younger than one day, so the application role cannot erase a
--    tenant's recent audit.
-- 4. `hub_usage_daily`: usage per tenant per day, added to by a periodic
--    flush (sums; the peak is the greater value).
-- 5. `hub_instance_quota(tenant, service, instance, max)`: whether a
--    registration fits the tenant's instance quota, checked after the
--    tenant's revision row lock (see its comment).
--
-- Deleting a tenant (the admin API) removes its keys, its usage and its
-- `hub_tenants` row, and keeps its audit rows until the retention prunes
-- them. Its revision row (`tenant_state`) stays, so that a tenant created
-- again under the same id never reuses a revision number a watcher saw.

ALTER TABLE hub_tenants RENAME COLUMN first_seen TO created_at;
ALTER TABLE hub_tenants
    -- NULL only for rows the registration path enters on first use (it
    -- inserts the id alone); read as the id.
    ADD COLUMN display_name   VARCHAR(200) CHECK (display_name <> ''),
    ADD COLUMN state          VARCHAR(16) NOT NULL DEFAULT 'active'
                              CHECK (state IN ('active', 'suspended')),
    ADD COLUMN max_instances  INTEGER CHECK (max_instances BETWEEN 0 AND 10000000),
    ADD COLUMN max_watchers   INTEGER CHECK (max_watchers BETWEEN 0 AND 10000000),
    ADD COLUMN rate           INTEGER CHECK (rate BETWEEN 1 AND 10000000),
    ADD COLUMN burst          INTEGER CHECK (burst BETWEEN 1 AND 10000000),
    ADD COLUMN updated_at     TIMESTAMPTZ NOT NULL DEFAULT now();
UPDATE hub_tenants SET display_name = tenant_id, updated_at = created_at;
GRANT UPDATE, DELETE ON hub_tenants TO central_hub_app;

CREATE TABLE hub_api_keys (
    tenant_id     VARCHAR(100) NOT NULL CHECK (tenant_id ~ '^[A-Za-z0-9_-]{1,100}$'),
    key_id        VARCHAR(16) NOT NULL UNIQUE CHECK (key_id ~ '^[0-9a-f]{16}$'),
    digest        BYTEA NOT NULL UNIQUE CHECK (length(digest) = 32),
    name          VARCHAR(200) NOT NULL CHECK (name <> ''),
    -- 1 read, 2 write, 4 admin.
    scopes        SMALLINT NOT NULL CHECK (scopes BETWEEN 1 AND 7),
    expires_at    TIMESTAMPTZ,
    created_by    VARCHAR(128) NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);
-- A tenant's keys, oldest first (the admin list).
CREATE INDEX hub_api_keys_tenant_idx ON hub_api_keys (tenant_id, created_at);

CREATE TABLE hub_admin_audit (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   VARCHAR(100) NOT NULL CHECK (tenant_id ~ '^[A-Za-z0-9_-]{1,100}$'),
    action      VARCHAR(32) NOT NULL,
    target      VARCHAR(128) NOT NULL,
    actor       VARCHAR(128),
    request_id  VARCHAR(128),
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    details     JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object')
);
CREATE INDEX hub_admin_audit_tenant_idx ON hub_admin_audit (tenant_id, id);
-- Rows are written in time order and never updated: BRIN finds old ones.
CREATE INDEX hub_admin_audit_at_idx ON hub_admin_audit USING brin (at);

CREATE TABLE hub_usage_daily (
    tenant_id         VARCHAR(100) NOT NULL CHECK (tenant_id ~ '^[A-Za-z0-9_-]{1,100}$'),
    day               DATE NOT NULL,
    requests_read     BIGINT NOT NULL DEFAULT 0 CHECK (requests_read >= 0),
    requests_write    BIGINT NOT NULL DEFAULT 0 CHECK (requests_write >= 0),
    requests_admin    BIGINT NOT NULL DEFAULT 0 CHECK (requests_admin >= 0),
    registrations     BIGINT NOT NULL DEFAULT 0 CHECK (registrations >= 0),
    heartbeats        BIGINT NOT NULL DEFAULT 0 CHECK (heartbeats >= 0),
    events_published  BIGINT NOT NULL DEFAULT 0 CHECK (events_published >= 0),
    peak_instances    BIGINT NOT NULL DEFAULT 0 CHECK (peak_instances >= 0),
    PRIMARY KEY (tenant_id, day)
);

ALTER TABLE hub_api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE hub_api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON hub_api_keys
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));

ALTER TABLE hub_admin_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE hub_admin_audit FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON hub_admin_audit
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));

ALTER TABLE hub_usage_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE hub_usage_daily FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON hub_usage_daily
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));

-- The two narrow paths across tenants, for the owner only (the role that
-- runs this migration and owns the SECURITY DEFINER functions below), and
-- only while one of those functions has set its transaction-local marker.
-- FORCE binds the owner to `tenant_isolation` like everyone else; these
-- policies add exactly one row set each:
-- - the key whose digest `hub_key_grant` was asked for (`hub.key_digest`,
--   hex), and nothing else, even for the owner;
-- - audit rows older than a day, while `hub_audit_prune` runs
--   (`hub.audit_prune`). DELETE reads the rows it removes, so the SELECT
--   policy is needed beside the DELETE one.
-- The application role may set those markers itself, but the policies do
-- not apply to it (they are `TO CURRENT_USER`, the owner): it gains nothing.
CREATE POLICY key_grant_lookup ON hub_api_keys FOR SELECT TO CURRENT_USER
    USING (digest = pg_catalog.decode(
        NULLIF(pg_catalog.current_setting('hub.key_digest', true), ''), 'hex'));
CREATE POLICY audit_retention_read ON hub_admin_audit FOR SELECT TO CURRENT_USER
    USING (pg_catalog.current_setting('hub.audit_prune', true) = 'on'
           AND at < pg_catalog.now() - interval '1 day');
CREATE POLICY audit_retention ON hub_admin_audit FOR DELETE TO CURRENT_USER
    USING (pg_catalog.current_setting('hub.audit_prune', true) = 'on'
           AND at < pg_catalog.now() - interval '1 day');

REVOKE ALL ON hub_api_keys, hub_admin_audit, hub_usage_daily FROM PUBLIC;
-- Keys: created, listed, revoked, touched (last_used_at) and deleted with
-- their tenant, all in the tenant's own scope.
GRANT SELECT, INSERT, UPDATE, DELETE ON hub_api_keys TO central_hub_app;
-- The audit is append-only for the application.
GRANT SELECT, INSERT ON hub_admin_audit TO central_hub_app;
GRANT USAGE ON SEQUENCE hub_admin_audit_id_seq TO central_hub_app;
-- Usage: upserted by the flush, deleted with its tenant.
GRANT SELECT, INSERT, UPDATE, DELETE ON hub_usage_daily TO central_hub_app;

-- The grant of the key whose SHA-256 digest is `key_digest`: nothing but
-- its id, tenant, scopes, expiry and whether it was revoked; no row for an
-- unknown digest. SECURITY DEFINER (the owner) with a fixed search_path
-- ending in pg_temp, and names qualified, so no object of the caller can
-- stand in for one used here.
CREATE FUNCTION public.hub_key_grant(key_digest BYTEA)
RETURNS TABLE (key_id VARCHAR, tenant_id VARCHAR, scopes SMALLINT,
               expires_at TIMESTAMPTZ, revoked BOOLEAN)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF key_digest IS NULL OR pg_catalog.length(key_digest) <> 32 THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('hub.key_digest', pg_catalog.encode(key_digest, 'hex'), true);
    RETURN QUERY
        SELECT k.key_id, k.tenant_id, k.scopes, k.expires_at, k.revoked_at IS NOT NULL
        FROM public.hub_api_keys k
        WHERE k.digest = key_digest;
    PERFORM pg_catalog.set_config('hub.key_digest', '', true);
END
$$;
REVOKE ALL ON FUNCTION public.hub_key_grant(BYTEA) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hub_key_grant(BYTEA) TO central_hub_app;

-- Deletes up to `max_rows` audit rows (of every tenant, deleted tenants
-- included) written before `cutoff`, and never one younger than a day
-- whatever the cutoff: pruning goes by age only. Returns how many.
CREATE FUNCTION public.hub_audit_prune(cutoff TIMESTAMPTZ, max_rows INTEGER)
RETURNS BIGINT
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    pruned BIGINT;
BEGIN
    IF cutoff IS NULL OR max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'hub_audit_prune needs a cutoff and deletes at least one row per call';
    END IF;
    PERFORM pg_catalog.set_config('hub.audit_prune', 'on', true);
    WITH doomed AS (
        SELECT a.id FROM public.hub_admin_audit a
        WHERE a.at < LEAST(cutoff, pg_catalog.now() - interval '1 day')
        ORDER BY a.at
        LIMIT max_rows
    ), gone AS (
        DELETE FROM public.hub_admin_audit a USING doomed WHERE a.id = doomed.id RETURNING 1
    )
    SELECT pg_catalog.count(*) INTO pruned FROM gone;
    PERFORM pg_catalog.set_config('hub.audit_prune', '', true);
    RETURN pruned;
END
$$;
REVOKE ALL ON FUNCTION public.hub_audit_prune(TIMESTAMPTZ, INTEGER) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hub_audit_prune(TIMESTAMPTZ, INTEGER) TO central_hub_app;

-- Whether a registration of (`service`, `instance`) for `tenant` fits a
-- quota of `max_instances`: always for an instance the tenant already has
-- (an update never fails on the quota), else when the tenant has fewer.
--
-- Atomic: it first takes the tenant's revision row lock, the lock every
-- change of a tenant takes first, and only then counts. A VOLATILE function takes a fresh snapshot
-- for each of its statements, so the count sees every change committed
-- while it waited for the lock; the registration statement that calls it
-- then writes under that same lock. Concurrent registrations of one tenant
-- therefore count, compare and insert one after the other and cannot
-- overshoot. (A count in the registration statement itself would read the
-- statement's snapshot, taken before the lock wait, and could.)
--
-- SECURITY INVOKER: it runs as the application, in the tenant's own scope,
-- and row-level security limits it to the tenant's rows. Names are
-- qualified instead of a SET search_path, which would add a configuration
-- save and restore to every limited registration.
CREATE FUNCTION public.hub_instance_quota(tenant VARCHAR, service VARCHAR, instance VARCHAR,
                                          max_instances INTEGER)
RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    held BIGINT;
BEGIN
    PERFORM 1 FROM public.tenant_state s WHERE s.tenant_id = tenant FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        -- No revision row to lock yet: the calling statement creates it. Two
        -- first registrations queue on a transaction advisory lock of the
        -- tenant instead (the two-key form, apart from the hub's one-key
        -- locks; a hash collision only makes two tenants queue), then look
        -- again: the row a first registration committed meanwhile is locked
        -- like any other. The row cannot be created here: the calling
        -- statement's own upsert of it would then fail ("cannot affect row
        -- a second time").
        PERFORM pg_catalog.pg_advisory_xact_lock(1213547089, pg_catalog.hashtext(tenant));
        PERFORM 1 FROM public.tenant_state s WHERE s.tenant_id = tenant FOR NO KEY UPDATE;
    END IF;
    IF EXISTS (SELECT 1 FROM public.service_registry r
               WHERE r.tenant_id = tenant AND r.service_name = service
                 AND r.instance_id = instance) THEN
        RETURN true;
    END IF;
    SELECT pg_catalog.count(*) INTO held
    FROM (SELECT 1 FROM public.service_registry r WHERE r.tenant_id = tenant
          LIMIT GREATEST(max_instances, 0)) AS held_rows;
    RETURN held < max_instances;
END
$$;
REVOKE ALL ON FUNCTION public.hub_instance_quota(VARCHAR, VARCHAR, VARCHAR, INTEGER) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hub_instance_quota(VARCHAR, VARCHAR, VARCHAR, INTEGER)
    TO central_hub_app;
