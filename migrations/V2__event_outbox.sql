-- Central Hub schema, version 2: the transactional outbox of registry events.
--
-- Every registry change that writes an audit row also writes its event here,
-- in the same transaction, when the hub has event sinks configured (NATS,
-- Kafka), plus one `hub_outbox_due` row per sink. A relay per sink publishes
-- its due events in id order and deletes their due rows; events no sink owes
-- any more are pruned after a retention. See docs/ARCHITECTURE.md, "Events
-- and the outbox".
--
-- Protection: the outbox holds every tenant's events, and no tenant-facing
-- query may read it. The application role may only INSERT into the two
-- tables, and row-level security checks that an inserted row belongs to the
-- tenant of the transaction (`app.tenant_id`), like every other tenant
-- table. It has no SELECT, UPDATE or DELETE: the relay reads, marks and
-- prunes through the SECURITY DEFINER functions below, which run as the
-- table owner and expose nothing but what the relay needs. RLS is enabled
-- but not forced, so those functions (owned by the owner) see all rows.

CREATE TABLE hub_outbox (
    id               BIGSERIAL PRIMARY KEY,
    tenant_id        VARCHAR(100) NOT NULL CHECK (tenant_id ~ '^[A-Za-z0-9_-]{1,100}$'),
    revision         BIGINT NOT NULL CHECK (revision > 0),
    event_id         UUID NOT NULL DEFAULT gen_random_uuid(),
    event_type       VARCHAR(32) NOT NULL CHECK (event_type IN (
                         'service.registered', 'service.updated', 'service.deregistered',
                         'service.status_changed', 'service.expired')),
    service_name     VARCHAR(128) NOT NULL,
    instance_id      VARCHAR(128) NOT NULL,
    occurred_at      TIMESTAMPTZ NOT NULL,
    previous_status  VARCHAR(8),
    -- The instance after the change (before it, for removals): the audit
    -- payload, plus the two timestamps the payload does not carry.
    payload          JSONB NOT NULL,
    registered_at    TIMESTAMPTZ NOT NULL,
    last_heartbeat   TIMESTAMPTZ NOT NULL,
    -- The replica the change was made through (bus header `hub-origin`).
    origin           VARCHAR(64),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Rows are written in time order and never updated: a BRIN index finds the
-- old ones for pruning at almost no cost per insert.
CREATE INDEX hub_outbox_created ON hub_outbox USING brin (created_at);

-- What each bus is still owed: one narrow row per bus and event (sink 1 =
-- NATS, 2 = Kafka), deleted when the bus confirmed the event. Events rows
-- are never updated: a delivery is a delete of a few bytes here, not a new
-- version of the whole event, which keeps the relays' cost to PostgreSQL
-- low. Each relay walks its bus's rows in id order by the primary key.
CREATE TABLE hub_outbox_due (
    sink       SMALLINT NOT NULL CHECK (sink IN (1, 2)),
    id         BIGINT NOT NULL,
    tenant_id  VARCHAR(100) NOT NULL,
    PRIMARY KEY (sink, id)
)
-- A queue table: rows live for milliseconds, and every relay read walks the
-- index entries of the rows deleted since the last vacuum. Vacuum it as soon
-- as a few thousand are dead rather than at a fifth of the (tiny) table.
WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
      autovacuum_vacuum_cost_delay = 0);

ALTER TABLE hub_outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_insert ON hub_outbox FOR INSERT
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));
ALTER TABLE hub_outbox_due ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_insert ON hub_outbox_due FOR INSERT
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));

REVOKE ALL ON hub_outbox, hub_outbox_due FROM PUBLIC;
GRANT INSERT ON hub_outbox, hub_outbox_due TO central_hub_app;
GRANT USAGE ON SEQUENCE hub_outbox_id_seq TO central_hub_app;

-- Up to `max_rows` events still owed to the sink `sink_bit`, oldest first.
CREATE FUNCTION hub_outbox_pending(sink_bit SMALLINT, max_rows INTEGER)
RETURNS TABLE (id BIGINT, tenant_id VARCHAR, revision BIGINT, event_id UUID,
               event_type VARCHAR, service_name VARCHAR, instance_id VARCHAR,
               occurred_at TIMESTAMPTZ, previous_status VARCHAR, payload JSONB,
               registered_at TIMESTAMPTZ, last_heartbeat TIMESTAMPTZ, origin VARCHAR)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path FROM CURRENT
AS $$
BEGIN
    IF sink_bit NOT IN (1, 2) THEN
        RAISE EXCEPTION 'unknown outbox sink bit %', sink_bit USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
        SELECT o.id, o.tenant_id, o.revision, o.event_id, o.event_type, o.service_name,
               o.instance_id, o.occurred_at, o.previous_status, o.payload,
               o.registered_at, o.last_heartbeat, o.origin
        FROM hub_outbox_due d JOIN hub_outbox o ON o.id = d.id
        WHERE d.sink = sink_bit
        ORDER BY d.id
        LIMIT max_rows;
END
$$;

-- Records that the sink `sink_bit` has the events `ids`; returns how many
-- it still owed.
CREATE FUNCTION hub_outbox_mark(sink_bit SMALLINT, ids BIGINT[])
RETURNS BIGINT
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT
AS $$
    WITH marked AS (
        DELETE FROM hub_outbox_due d WHERE d.sink = sink_bit AND d.id = ANY (ids)
        RETURNING 1
    )
    SELECT count(*) FROM marked
$$;

-- Deletes up to `max_rows` events written before `cutoff` that no sink
-- still owes. Events still owed are never pruned, however old.
CREATE FUNCTION hub_outbox_prune(cutoff TIMESTAMPTZ, max_rows INTEGER)
RETURNS BIGINT
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT
AS $$
    WITH doomed AS (
        SELECT o.id FROM hub_outbox o
        WHERE o.created_at < cutoff
          AND NOT EXISTS (SELECT 1 FROM hub_outbox_due d
                          WHERE d.sink IN (1, 2) AND d.id = o.id)
        LIMIT max_rows
    ), pruned AS (
        DELETE FROM hub_outbox o USING doomed WHERE o.id = doomed.id RETURNING 1
    )
    SELECT count(*) FROM pruned
$$;

-- The backlog of the sink `sink_bit`: events still owed and the creation
-- time of the oldest. With `own_tenant` true, only the events of the tenant
-- of the calling transaction (`app.tenant_id`, as set by the server's
-- tenant-scoped transaction: none when it is unset), for a tenant's
-- dashboard; with false, every tenant's (operators).
CREATE FUNCTION hub_outbox_backlog(sink_bit SMALLINT, own_tenant BOOLEAN)
RETURNS TABLE (backlog BIGINT, oldest_created_at TIMESTAMPTZ)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT
AS $$
    SELECT count(*), min(o.created_at)
    FROM hub_outbox_due d JOIN hub_outbox o ON o.id = d.id
    WHERE d.sink = sink_bit
      AND (NOT own_tenant
           OR d.tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))
$$;

REVOKE ALL ON FUNCTION hub_outbox_pending(SMALLINT, INTEGER) FROM PUBLIC;
REVOKE ALL ON FUNCTION hub_outbox_mark(SMALLINT, BIGINT[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION hub_outbox_prune(TIMESTAMPTZ, INTEGER) FROM PUBLIC;
REVOKE ALL ON FUNCTION hub_outbox_backlog(SMALLINT, BOOLEAN) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub_outbox_pending(SMALLINT, INTEGER) TO central_hub_app;
GRANT EXECUTE ON FUNCTION hub_outbox_mark(SMALLINT, BIGINT[]) TO central_hub_app;
GRANT EXECUTE ON FUNCTION hub_outbox_prune(TIMESTAMPTZ, INTEGER) TO central_hub_app;
GRANT EXECUTE ON FUNCTION hub_outbox_backlog(SMALLINT, BOOLEAN) TO central_hub_app;
