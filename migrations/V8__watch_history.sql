-- Watch history: `coordination_history` keeps, for every registry event,
-- what the event's envelope needs (its id, the previous status, the
-- instance's registration and heartbeat times), so that a watch can replay a
-- tenant's events from PostgreSQL exactly as NATS and Kafka carry them, and
-- every replica can read the changes made through the others in revision
-- order (hub-store `pg::changes`, fed by the V5 notifications).
--
-- The event id is written once per change, in the change's statement, to
-- both this table and `hub_outbox`: the replayed envelope and the bus's are
-- the same bytes, and consumers dedupe on that id.
--
-- Access: the application role already reads its tenant's rows of
-- `coordination_history` (V1: SELECT, under the `tenant_isolation` policy
-- with FORCE ROW LEVEL SECURITY). Nothing new is granted; the replay query
-- runs in the tenant's scoped transaction like every other read.
--
-- Retention: rows are never deleted by the hub, so a watch can resume from
-- any revision written since this migration. Rows written before it have no
-- event id: `tenant_state.history_from` records, per tenant, the revision
-- before which no exact replay exists (a watch asking for it gets `reset`).

ALTER TABLE coordination_history
    ADD COLUMN event_id UUID,
    ADD COLUMN previous_status VARCHAR(8),
    ADD COLUMN registered_at TIMESTAMPTZ,
    ADD COLUMN last_heartbeat TIMESTAMPTZ;

-- Replay reads a tenant's rows after a revision, in revision order.
CREATE INDEX coordination_history_tenant_revision_idx
    ON coordination_history (tenant_id, revision);

ALTER TABLE tenant_state ADD COLUMN history_from BIGINT NOT NULL DEFAULT 0;
-- Tenants that exist now have no exact history before their current
-- revision. The owner is bound by FORCE ROW LEVEL SECURITY and sees no row
-- without a tenant setting, so FORCE is lifted for this one statement, in
-- this migration's transaction.
ALTER TABLE tenant_state NO FORCE ROW LEVEL SECURITY;
UPDATE tenant_state SET history_from = revision;
ALTER TABLE tenant_state FORCE ROW LEVEL SECURITY;
