-- Central Hub schema, version 3: the outbox functions hardened, the relay's
-- own role, and events set aside instead of retried forever.
--
-- 1. Every SECURITY DEFINER function is recreated with
--    `SET search_path = pg_catalog, public, pg_temp` and schema-qualified
--    names. V2's `SET search_path FROM CURRENT` left `pg_temp` implicitly
--    FIRST: a caller could create a temporary table `hub_outbox_due` and make
--    `hub_outbox_prune`, running as the owner, delete events a bus was still
--    owed.
-- 2. Deleting an event still owed to a bus (or set aside) is refused by
--    PostgreSQL itself, whoever deletes it: a statement-level trigger on
--    `hub_outbox` checks the deleted rows against `hub_outbox_due` and
--    `hub_outbox_undeliverable`. It fires on deletes only (pruning), so it
--    costs registrations nothing.
-- 3. The relay gets its own NOLOGIN group role `central_hub_relay`, which
--    alone may read every tenant's events (`hub_outbox_pending`), mark them
--    delivered, set them aside and prune. The request path's role
--    `central_hub_app` keeps only the backlog counts for dashboards. A
--    single-login set-up makes its login a member of both roles
--    (`cargo xtask migrate --app-user NAME` does).
-- 4. `hub_outbox_undeliverable`: events a relay could not decode or a bus
--    refused for good, set aside (per bus) with the cause. They are kept,
--    never pruned, counted on the dashboard, and can be sent again by an
--    operator (docs/POSTGRES.md).
--
-- The hub's tables live in the schema `public` (V1 grants its usage); the
-- qualified names below depend on it, so a database migrated elsewhere is
-- refused here rather than half-hardened.

DO $$
BEGIN
    IF to_regclass('public.hub_outbox') IS NULL OR to_regclass('public.hub_outbox_due') IS NULL THEN
        RAISE EXCEPTION 'the outbox tables are not in the schema public (current schema: %); Central Hub expects its tables there',
            current_schema();
    END IF;
END
$$;

-- Since PostgreSQL 15 only the schema's owner may create objects in
-- `public`; on older servers every role may, and a function or operator
-- planted there could be picked by the functions below. Revoking it is a
-- no-op where it is already so (and a warning, not an error, for an owner
-- who may not revoke it).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'central_hub_relay') THEN
        CREATE ROLE central_hub_relay NOLOGIN;
    END IF;
EXCEPTION
    -- Another database's migration created it at the same moment.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
GRANT USAGE ON SCHEMA public TO central_hub_relay;

-- Events set aside, per bus: kept with their cause until an operator
-- decides (send again, or delete both this row and the event).
CREATE TABLE public.hub_outbox_undeliverable (
    sink          SMALLINT NOT NULL CHECK (sink IN (1, 2)),
    id            BIGINT NOT NULL REFERENCES public.hub_outbox (id),
    tenant_id     VARCHAR(100) NOT NULL,
    reason        TEXT NOT NULL,
    set_aside_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, id)
);
-- Nobody but the owner reads it directly (the relay writes it through
-- `hub_outbox_set_aside`, dashboards count it through `hub_outbox_backlog`).
ALTER TABLE public.hub_outbox_undeliverable ENABLE ROW LEVEL SECURITY;
-- The foreign key's check when an event is deleted (pruning) looks here by id.
CREATE INDEX hub_outbox_undeliverable_id ON public.hub_outbox_undeliverable (id);
REVOKE ALL ON public.hub_outbox_undeliverable FROM PUBLIC;

CREATE OR REPLACE FUNCTION public.hub_outbox_pending(sink_bit SMALLINT, max_rows INTEGER)
RETURNS TABLE (id BIGINT, tenant_id VARCHAR, revision BIGINT, event_id UUID,
               event_type VARCHAR, service_name VARCHAR, instance_id VARCHAR,
               occurred_at TIMESTAMPTZ, previous_status VARCHAR, payload JSONB,
               registered_at TIMESTAMPTZ, last_heartbeat TIMESTAMPTZ, origin VARCHAR)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF sink_bit NOT IN (1, 2) THEN
        RAISE EXCEPTION 'unknown outbox sink bit %', sink_bit USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
        SELECT o.id, o.tenant_id, o.revision, o.event_id, o.event_type, o.service_name,
               o.instance_id, o.occurred_at, o.previous_status, o.payload,
               o.registered_at, o.last_heartbeat, o.origin
        FROM public.hub_outbox_due d JOIN public.hub_outbox o ON o.id = d.id
        WHERE d.sink = sink_bit
        ORDER BY d.id
        LIMIT max_rows;
END
$$;

CREATE OR REPLACE FUNCTION public.hub_outbox_mark(sink_bit SMALLINT, ids BIGINT[])
RETURNS BIGINT
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
AS $$
    WITH marked AS (
        DELETE FROM public.hub_outbox_due d WHERE d.sink = sink_bit AND d.id = ANY (ids)
        RETURNING 1
    )
    SELECT count(*) FROM marked
$$;

-- Sets the event `outbox_id` aside for the sink `sink_bit`: its due row
-- moves to `hub_outbox_undeliverable` with `reason` (cut to 2000
-- characters). Returns whether the sink still owed it.
CREATE FUNCTION public.hub_outbox_set_aside(sink_bit SMALLINT, outbox_id BIGINT, reason TEXT)
RETURNS BOOLEAN
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
AS $$
    WITH moved AS (
        DELETE FROM public.hub_outbox_due d WHERE d.sink = sink_bit AND d.id = outbox_id
        RETURNING d.sink, d.id, d.tenant_id
    ), kept AS (
        INSERT INTO public.hub_outbox_undeliverable (sink, id, tenant_id, reason)
        SELECT m.sink, m.id, m.tenant_id, left(coalesce(reason, ''), 2000) FROM moved m
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM moved)
$$;

-- As in V2, plus: events set aside are never pruned either.
CREATE OR REPLACE FUNCTION public.hub_outbox_prune(cutoff TIMESTAMPTZ, max_rows INTEGER)
RETURNS BIGINT
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
AS $$
    WITH doomed AS (
        SELECT o.id FROM public.hub_outbox o
        WHERE o.created_at < cutoff
          AND NOT EXISTS (SELECT 1 FROM public.hub_outbox_due d
                          WHERE d.sink IN (1, 2) AND d.id = o.id)
          AND NOT EXISTS (SELECT 1 FROM public.hub_outbox_undeliverable u
                          WHERE u.sink IN (1, 2) AND u.id = o.id)
        LIMIT max_rows
    ), pruned AS (
        DELETE FROM public.hub_outbox o USING doomed WHERE o.id = doomed.id RETURNING 1
    )
    SELECT count(*) FROM pruned
$$;

-- The backlog gains a column (the events set aside), so it is dropped and
-- created again rather than replaced.
DROP FUNCTION public.hub_outbox_backlog(SMALLINT, BOOLEAN);
-- What the sink `sink_bit` is owed: events still due, the creation time of
-- the oldest, and the events set aside. With `own_tenant` true, only those
-- of the tenant of the calling transaction (`app.tenant_id`: none when
-- unset), for a tenant's dashboard; with false, every tenant's (operators).
CREATE FUNCTION public.hub_outbox_backlog(sink_bit SMALLINT, own_tenant BOOLEAN)
RETURNS TABLE (backlog BIGINT, oldest_created_at TIMESTAMPTZ, undeliverable BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT due.backlog, due.oldest, aside.undeliverable
    FROM (SELECT count(*) AS backlog, min(o.created_at) AS oldest
          FROM public.hub_outbox_due d JOIN public.hub_outbox o ON o.id = d.id
          WHERE d.sink = sink_bit
            AND (NOT own_tenant
                 OR d.tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))) due,
         (SELECT count(*) AS undeliverable
          FROM public.hub_outbox_undeliverable u
          WHERE u.sink = sink_bit
            AND (NOT own_tenant
                 OR u.tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))) aside
$$;

-- The guard: no statement may delete an event a bus is still owed or that
-- was set aside, whoever runs it (the pruning function included, whatever
-- its search path). Statement-level, over the deleted rows only.
CREATE FUNCTION public.hub_outbox_keep_owed()
RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    owed BIGINT;
BEGIN
    SELECT g.id INTO owed
    FROM gone g
    WHERE EXISTS (SELECT 1 FROM public.hub_outbox_due d WHERE d.sink IN (1, 2) AND d.id = g.id)
       OR EXISTS (SELECT 1 FROM public.hub_outbox_undeliverable u
                  WHERE u.sink IN (1, 2) AND u.id = g.id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'outbox event % is still owed to a bus or set aside: it may not be deleted', owed
            USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION public.hub_outbox_keep_owed() FROM PUBLIC;
CREATE TRIGGER hub_outbox_keep_owed
    AFTER DELETE ON public.hub_outbox
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION public.hub_outbox_keep_owed();

-- Who may call what: the relay role the relay's functions, the application
-- role only the backlog counts.
REVOKE ALL ON FUNCTION public.hub_outbox_pending(SMALLINT, INTEGER) FROM PUBLIC, central_hub_app;
REVOKE ALL ON FUNCTION public.hub_outbox_mark(SMALLINT, BIGINT[]) FROM PUBLIC, central_hub_app;
REVOKE ALL ON FUNCTION public.hub_outbox_prune(TIMESTAMPTZ, INTEGER) FROM PUBLIC, central_hub_app;
REVOKE ALL ON FUNCTION public.hub_outbox_set_aside(SMALLINT, BIGINT, TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.hub_outbox_backlog(SMALLINT, BOOLEAN) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hub_outbox_pending(SMALLINT, INTEGER) TO central_hub_relay;
GRANT EXECUTE ON FUNCTION public.hub_outbox_mark(SMALLINT, BIGINT[]) TO central_hub_relay;
GRANT EXECUTE ON FUNCTION public.hub_outbox_prune(TIMESTAMPTZ, INTEGER) TO central_hub_relay;
GRANT EXECUTE ON FUNCTION public.hub_outbox_set_aside(SMALLINT, BIGINT, TEXT) TO central_hub_relay;
GRANT EXECUTE ON FUNCTION public.hub_outbox_backlog(SMALLINT, BOOLEAN) TO central_hub_app;
