-- Central Hub schema, version 1: the multi-tenant registry with row-level security.
--
-- Run by `cargo xtask migrate` (or the server with HUB_MIGRATE_ON_START=true)
-- as the role that will own the tables. That role must not be the one the
-- server connects as in production: the owner could ALTER TABLE ... DISABLE
-- ROW LEVEL SECURITY. The server's login role is made a member of the group
-- role `central_hub_app` created here, which has exactly the privileges the
-- server needs.
--
-- Upgrade path: a database of the original single-tenant hub has
-- `service_registry`, `health_metrics` and `coordination_history` without a
-- `tenant_id` column. Those tables are renamed to `legacy_*` (with their
-- indexes and sequences), the new tables are created, and every old row that
-- fits the new constraints is copied into tenant `system` (all in this
-- migration's transaction). The legacy tables are kept, untouched and not
-- granted to the application, so that the operator can check the import and
-- see the rows it left out; dropping them is the operator's call.

DO $$
DECLARE
    legacy record;
BEGIN
    IF EXISTS (
        SELECT 1 FROM information_schema.tables
        WHERE table_schema = current_schema() AND table_name = 'service_registry'
    ) AND NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'service_registry'
          AND column_name = 'tenant_id'
    ) THEN
        ALTER TABLE service_registry RENAME TO legacy_service_registry;
        IF to_regclass('health_metrics') IS NOT NULL THEN
            ALTER TABLE health_metrics RENAME TO legacy_health_metrics;
        END IF;
        IF to_regclass('coordination_history') IS NOT NULL THEN
            ALTER TABLE coordination_history RENAME TO legacy_coordination_history;
        END IF;
        -- A renamed table keeps the names of its indexes and of its serial
        -- columns' sequences (`health_metrics_pkey`, `health_metrics_id_seq`).
        -- Left so, the new tables' would be created as `health_metrics_id_seq1`
        -- and so on, and the sequence grants below would go to the legacy
        -- sequences: the application could not insert a metric or an audit
        -- row. They take the `legacy_` prefix as well.
        FOR legacy IN
            SELECT 'INDEX' AS kind, i.indexrelid::regclass::text AS object, c.relname
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid IN (to_regclass('legacy_service_registry'),
                                 to_regclass('legacy_health_metrics'),
                                 to_regclass('legacy_coordination_history'))
            UNION ALL
            SELECT 'SEQUENCE', d.objid::regclass::text, c.relname
            FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
            WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
              AND c.relkind = 'S' AND d.deptype IN ('a', 'i')
              AND d.refobjid IN (to_regclass('legacy_service_registry'),
                                 to_regclass('legacy_health_metrics'),
                                 to_regclass('legacy_coordination_history'))
        LOOP
            EXECUTE format('ALTER %s %s RENAME TO %I',
                           legacy.kind, legacy.object, left('legacy_' || legacy.relname, 63));
        END LOOP;
    END IF;
END
$$;

-- The group role of the application. Created once per cluster; roles are
-- cluster-wide, so several databases (or test databases) share it.
-- Checked first: CREATE ROLE needs CREATEROLE even when the role exists, and
-- an owner without it must still be able to migrate a second database.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'central_hub_app') THEN
        CREATE ROLE central_hub_app NOLOGIN;
    END IF;
EXCEPTION
    -- Another database's migration created it at the same moment.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- Tenants known to the hub: ids only, no tenant data. It is the one table
-- without row-level security, read by the lease reaper to visit each tenant
-- (each visit then runs in that tenant's own scoped transaction).
CREATE TABLE hub_tenants (
    tenant_id   VARCHAR(100) PRIMARY KEY CHECK (tenant_id ~ '^[A-Za-z0-9_-]{1,100}$'),
    first_seen  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Per-tenant revision counter: every change takes the next value of its
-- tenant. Per tenant rather than one global sequence, so revision numbers do
-- not reveal how busy other tenants are.
CREATE TABLE tenant_state (
    tenant_id   VARCHAR(100) PRIMARY KEY CHECK (tenant_id ~ '^[A-Za-z0-9_-]{1,100}$'),
    revision    BIGINT NOT NULL CHECK (revision >= 0)
);

CREATE TABLE service_registry (
    tenant_id         VARCHAR(100) NOT NULL CHECK (tenant_id ~ '^[A-Za-z0-9_-]{1,100}$'),
    service_name      VARCHAR(128) COLLATE "C" NOT NULL CHECK (service_name ~ '^[A-Za-z0-9_.-]{1,128}$'),
    instance_id       VARCHAR(128) COLLATE "C" NOT NULL CHECK (instance_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    host              VARCHAR(255) NOT NULL CHECK (host <> ''),
    port              INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    protocol          VARCHAR(8) NOT NULL CHECK (protocol IN ('http', 'https', 'grpc', 'tcp', 'ws', 'wss')),
    health_endpoint   VARCHAR(255) NOT NULL CHECK (health_endpoint LIKE '/%'),
    version           VARCHAR(64),
    tags              TEXT[] NOT NULL DEFAULT '{}' CHECK (cardinality(tags) <= 64),
    metadata          JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    ttl_seconds       INTEGER NOT NULL CHECK (ttl_seconds BETWEEN 5 AND 3600),
    status            VARCHAR(8) NOT NULL CHECK (status IN ('passing', 'warning', 'critical')),
    registered_at     TIMESTAMPTZ NOT NULL,
    last_heartbeat    TIMESTAMPTZ NOT NULL,
    lease_expires_at  TIMESTAMPTZ NOT NULL,
    revision          BIGINT NOT NULL,
    -- The unique index starts with (tenant_id) and (tenant_id, service_name),
    -- so it also serves the by-tenant and by-service lookups of the design;
    -- separate indexes on those prefixes would only slow every write.
    CONSTRAINT service_registry_instance_key UNIQUE (tenant_id, service_name, instance_id)
);
-- The reaper looks for leases that ran out, per tenant.
CREATE INDEX service_registry_lease_idx ON service_registry (tenant_id, lease_expires_at);

CREATE TABLE health_metrics (
    id                BIGSERIAL PRIMARY KEY,
    tenant_id         VARCHAR(100) NOT NULL CHECK (tenant_id ~ '^[A-Za-z0-9_-]{1,100}$'),
    service_name      VARCHAR(128) NOT NULL,
    instance_id       VARCHAR(128) NOT NULL,
    status            VARCHAR(8) NOT NULL CHECK (status IN ('passing', 'warning', 'critical')),
    response_time_ms  DOUBLE PRECISION CHECK (response_time_ms >= 0),
    cpu_usage         DOUBLE PRECISION CHECK (cpu_usage BETWEEN 0 AND 100),
    memory_usage      DOUBLE PRECISION CHECK (memory_usage >= 0),
    error_rate        DOUBLE PRECISION CHECK (error_rate BETWEEN 0 AND 1),
    metadata          JSONB NOT NULL DEFAULT '{}',
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX health_metrics_service_time_idx ON health_metrics (tenant_id, service_name, recorded_at);

-- Append-only audit of every registry change (the application role may not
-- update or delete it).
CREATE TABLE coordination_history (
    id            BIGSERIAL PRIMARY KEY,
    tenant_id     VARCHAR(100) NOT NULL CHECK (tenant_id ~ '^[A-Za-z0-9_-]{1,100}$'),
    revision      BIGINT NOT NULL,
    event_type    VARCHAR(32) NOT NULL CHECK (event_type IN (
                      'service.registered', 'service.updated', 'service.deregistered',
                      'service.status_changed', 'service.expired')),
    service_name  VARCHAR(128) NOT NULL,
    instance_id   VARCHAR(128) NOT NULL,
    actor         VARCHAR(128),
    request_id    VARCHAR(128),
    occurred_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    payload       JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX coordination_history_tenant_time_idx ON coordination_history (tenant_id, occurred_at);

-- Row-level security: ENABLE applies it to the application role, FORCE to
-- the owner as well. The policy compares with the transaction-local setting
-- `app.tenant_id`; unset gives NULL and an empty string (what the setting
-- reads as after a transaction that set it locally) is turned into NULL, and
-- `tenant_id = NULL` is never true: no tenant, no rows (fail closed).
ALTER TABLE tenant_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_state FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_state
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));

ALTER TABLE service_registry ENABLE ROW LEVEL SECURITY;
ALTER TABLE service_registry FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON service_registry
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));

ALTER TABLE health_metrics ENABLE ROW LEVEL SECURITY;
ALTER TABLE health_metrics FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON health_metrics
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));

ALTER TABLE coordination_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE coordination_history FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON coordination_history
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));

-- Exactly what the server needs.
GRANT USAGE ON SCHEMA public TO central_hub_app;
GRANT SELECT, INSERT ON hub_tenants TO central_hub_app;
GRANT SELECT, INSERT, UPDATE ON tenant_state TO central_hub_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON service_registry TO central_hub_app;
GRANT SELECT, INSERT ON health_metrics, coordination_history TO central_hub_app;
GRANT USAGE ON SEQUENCE health_metrics_id_seq, coordination_history_id_seq TO central_hub_app;

-- Upgrade: copy the original single-tenant rows into tenant `system`.
DO $$
BEGIN
    IF to_regclass('legacy_service_registry') IS NOT NULL THEN
        INSERT INTO hub_tenants (tenant_id) VALUES ('system') ON CONFLICT DO NOTHING;
        -- Rows are written as the owner, who is bound by FORCE: act as `system`.
        PERFORM set_config('app.tenant_id', 'system', true);
        INSERT INTO service_registry (
            tenant_id, service_name, instance_id, host, port, protocol, health_endpoint,
            version, tags, metadata, ttl_seconds, status, registered_at, last_heartbeat,
            lease_expires_at, revision)
        SELECT 'system', l.service_name, l.service_name, l.host, l.port,
               CASE WHEN lower(l.protocol) IN ('http', 'https', 'grpc', 'tcp', 'ws', 'wss')
                    THEN lower(l.protocol) ELSE 'http' END,
               CASE WHEN l.health_endpoint LIKE '/%' THEN l.health_endpoint ELSE '/health' END,
               NULLIF(left(l.version, 64), ''),
               '{}',
               CASE WHEN jsonb_typeof(l.metadata) = 'object' THEN l.metadata ELSE '{}' END,
               30,
               CASE lower(coalesce(l.status, ''))
                    WHEN 'passing' THEN 'passing' WHEN 'healthy' THEN 'passing'
                    WHEN 'active' THEN 'passing' WHEN 'up' THEN 'passing'
                    WHEN 'warning' THEN 'warning' WHEN 'degraded' THEN 'warning'
                    ELSE 'critical' END,
               coalesce(l.registered_at AT TIME ZONE 'UTC', now()),
               coalesce(l.last_heartbeat AT TIME ZONE 'UTC', l.registered_at AT TIME ZONE 'UTC', now()),
               -- Imported instances start with one lease from the upgrade,
               -- so live services keep them with their next heartbeat.
               now() + interval '30 seconds',
               row_number() OVER (ORDER BY l.service_name)
        FROM legacy_service_registry l
        WHERE l.service_name ~ '^[A-Za-z0-9_.-]{1,128}$'
          AND l.host ~ '^[A-Za-z0-9_.:-]{1,255}$'
          AND l.port BETWEEN 1 AND 65535;
        INSERT INTO tenant_state (tenant_id, revision)
        SELECT 'system', count(*) FROM service_registry WHERE tenant_id = 'system';
    END IF;
    IF to_regclass('legacy_health_metrics') IS NOT NULL THEN
        PERFORM set_config('app.tenant_id', 'system', true);
        INSERT INTO health_metrics (tenant_id, service_name, instance_id, status, response_time_ms,
                                    cpu_usage, memory_usage, error_rate, metadata, recorded_at)
        SELECT 'system', l.service_name, l.service_name,
               CASE lower(coalesce(l.status, ''))
                    WHEN 'passing' THEN 'passing' WHEN 'healthy' THEN 'passing'
                    WHEN 'active' THEN 'passing' WHEN 'up' THEN 'passing'
                    WHEN 'warning' THEN 'warning' WHEN 'degraded' THEN 'warning'
                    ELSE 'critical' END,
               CASE WHEN l.response_time_ms >= 0 THEN l.response_time_ms END,
               CASE WHEN l.cpu_usage BETWEEN 0 AND 100 THEN l.cpu_usage END,
               CASE WHEN l.memory_usage >= 0 THEN l.memory_usage END,
               CASE WHEN l.error_rate BETWEEN 0 AND 1 THEN l.error_rate END,
               CASE WHEN jsonb_typeof(l.metadata) = 'object' THEN l.metadata ELSE '{}' END,
               coalesce(l.recorded_at AT TIME ZONE 'UTC', now())
        FROM legacy_health_metrics l
        WHERE l.service_name ~ '^[A-Za-z0-9_.-]{1,128}$';
    END IF;
    IF to_regclass('legacy_coordination_history') IS NOT NULL THEN
        -- The original audit rows had no registry revision; they are kept as
        -- history under revision 0, with their whole row as the payload.
        PERFORM set_config('app.tenant_id', 'system', true);
        INSERT INTO coordination_history (tenant_id, revision, event_type, service_name,
                                          instance_id, actor, occurred_at, payload)
        SELECT 'system', 0, 'service.updated',
               left(coalesce(nullif(l.service_name, ''), 'unknown'), 128),
               left(coalesce(nullif(l.service_name, ''), 'unknown'), 128),
               'legacy-import',
               coalesce(l.created_at AT TIME ZONE 'UTC', now()),
               to_jsonb(l)
        FROM legacy_coordination_history l;
    END IF;
END
$$;
