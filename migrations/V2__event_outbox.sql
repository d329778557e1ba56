-- Central Hub schema, version 2: the transactional outbox of registry events.
--
-- Every registry change that writes an audit row also writes one row here, in
-- the same transaction, when the hub has event sinks configured (NATS, Kafka).
-- A relay per sink publishes pending rows in id order and clears the sink's
-- bit in `pending`; rows whose every bit is clear are pruned after a
-- retention. See docs/ARCHITECTURE.md, "Events and the outbox".
--
-- Protection: the outbox holds every tenant's events, and no tenant-facing
-- query may read it. The application role may only INSERT, and row-level
-- security checks that an inserted row belongs to the tenant of the
-- transaction (`app.tenant_id`), like every other tenant table. It has no
-- SELECT, UPDATE or DELETE: the relay reads, marks and prunes through the
-- SECURITY DEFINER functions below, which run as the table owner and expose
-- nothing but what the relay needs. RLS is enabled but not forced, so those
-- functions (owned by the owner) see all rows.

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
    -- One bit per sink still to deliver to: 1 = NATS, 2 = Kafka.
    pending          SMALLINT NOT NULL CHECK (pending BETWEEN 0 AND 3),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at     TIMESTAMPTZ,
    CHECK ((pending = 0) = (published_at IS NOT NULL))
);
-- Each relay reads its sink's pending rows in id order; the partial indexes
-- hold only those rows, so a relay never walks delivered ones (nor rows only
-- the other, perhaps stopped, sink still owes).
CREATE INDEX hub_outbox_nats_pending ON hub_outbox (id) WHERE pending & 1 <> 0;
CREATE INDEX hub_outbox_kafka_pending ON hub_outbox (id) WHERE pending & 2 <> 0;
-- Pruning finds delivered rows by the time they were delivered.
CREATE INDEX hub_outbox_published ON hub_outbox (published_at) WHERE pending = 0;

ALTER TABLE hub_outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_insert ON hub_outbox FOR INSERT
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));

REVOKE ALL ON hub_outbox FROM PUBLIC;
GRANT INSERT ON hub_outbox TO central_hub_app;
GRANT USAGE ON SEQUENCE hub_outbox_id_seq TO central_hub_app;

-- The functions are PL/pgSQL so that each branch names its sink's bit as a
-- constant: the planner then uses that sink's partial index.

-- Up to `max_rows` rows still owed to the sink `sink_bit`, oldest first.
CREATE FUNCTION hub_outbox_pending(sink_bit SMALLINT, max_rows INTEGER)
RETURNS TABLE (id BIGINT, tenant_id VARCHAR, revision BIGINT, event_id UUID,
               event_type VARCHAR, service_name VARCHAR, instance_id VARCHAR,
               occurred_at TIMESTAMPTZ, previous_status VARCHAR, payload JSONB,
               registered_at TIMESTAMPTZ, last_heartbeat TIMESTAMPTZ, origin VARCHAR)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path FROM CURRENT
AS $$
BEGIN
    IF sink_bit = 1 THEN
        RETURN QUERY
            SELECT o.id, o.tenant_id, o.revision, o.event_id, o.event_type, o.service_name,
                   o.instance_id, o.occurred_at, o.previous_status, o.payload,
                   o.registered_at, o.last_heartbeat, o.origin
            FROM hub_outbox o WHERE o.pending & 1 <> 0 ORDER BY o.id LIMIT max_rows;
    ELSIF sink_bit = 2 THEN
        RETURN QUERY
            SELECT o.id, o.tenant_id, o.revision, o.event_id, o.event_type, o.service_name,
                   o.instance_id, o.occurred_at, o.previous_status, o.payload,
                   o.registered_at, o.last_heartbeat, o.origin
            FROM hub_outbox o WHERE o.pending & 2 <> 0 ORDER BY o.id LIMIT max_rows;
    ELSE
        RAISE EXCEPTION 'unknown outbox sink bit %', sink_bit USING ERRCODE = '22023';
    END IF;
END
$$;

-- Marks rows as delivered to the sink `sink_bit`; returns how many changed.
CREATE FUNCTION hub_outbox_mark(sink_bit SMALLINT, ids BIGINT[])
RETURNS BIGINT
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT
AS $$
    WITH marked AS (
        UPDATE hub_outbox o
        SET pending = o.pending & ~sink_bit,
            published_at = CASE WHEN o.pending & ~sink_bit = 0 THEN now() END
        WHERE o.id = ANY (ids) AND o.pending & sink_bit <> 0
        RETURNING 1
    )
    SELECT count(*) FROM marked
$$;

-- Deletes up to `max_rows` rows delivered to every sink before `cutoff`.
-- Rows still owed to a sink are never pruned, however old.
CREATE FUNCTION hub_outbox_prune(cutoff TIMESTAMPTZ, max_rows INTEGER)
RETURNS BIGINT
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT
AS $$
    WITH doomed AS (
        SELECT o.id FROM hub_outbox o
        WHERE o.pending = 0 AND o.published_at < cutoff
        ORDER BY o.published_at
        LIMIT max_rows
    ), pruned AS (
        DELETE FROM hub_outbox o USING doomed WHERE o.id = doomed.id RETURNING 1
    )
    SELECT count(*) FROM pruned
$$;

-- The backlog of the sink `sink_bit`: rows still owed and the creation time
-- of the oldest. For one tenant when `tenant` is not null (a tenant's
-- dashboard), for all tenants otherwise (operators).
CREATE FUNCTION hub_outbox_backlog(sink_bit SMALLINT, tenant VARCHAR)
RETURNS TABLE (backlog BIGINT, oldest_created_at TIMESTAMPTZ)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path FROM CURRENT
AS $$
BEGIN
    IF sink_bit = 1 THEN
        RETURN QUERY SELECT count(*), min(o.created_at) FROM hub_outbox o
            WHERE o.pending & 1 <> 0 AND (tenant IS NULL OR o.tenant_id = tenant);
    ELSIF sink_bit = 2 THEN
        RETURN QUERY SELECT count(*), min(o.created_at) FROM hub_outbox o
            WHERE o.pending & 2 <> 0 AND (tenant IS NULL OR o.tenant_id = tenant);
    ELSE
        RAISE EXCEPTION 'unknown outbox sink bit %', sink_bit USING ERRCODE = '22023';
    END IF;
END
$$;

REVOKE ALL ON FUNCTION hub_outbox_pending(SMALLINT, INTEGER) FROM PUBLIC;
REVOKE ALL ON FUNCTION hub_outbox_mark(SMALLINT, BIGINT[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION hub_outbox_prune(TIMESTAMPTZ, INTEGER) FROM PUBLIC;
REVOKE ALL ON FUNCTION hub_outbox_backlog(SMALLINT, VARCHAR) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub_outbox_pending(SMALLINT, INTEGER) TO central_hub_app;
GRANT EXECUTE ON FUNCTION hub_outbox_mark(SMALLINT, BIGINT[]) TO central_hub_app;
GRANT EXECUTE ON FUNCTION hub_outbox_prune(TIMESTAMPTZ, INTEGER) TO central_hub_app;
GRANT EXECUTE ON FUNCTION hub_outbox_backlog(SMALLINT, VARCHAR) TO central_hub_app;
