//! Upgrades from the databases the original (Python) hub left behind: recognising their state before anything changes, and moving their rows into the tenants of the new schema.
//!
//! Three legacy states are known (see docs/POSTGRES.md, "Upgrading from the
//! original hub"):
//! - the original single-tenant schema (`service_registry`, `health_metrics`,
//!   `coordination_history` without `tenant_id`);
//! - that schema after the seed document's "Database Migration" SQL
//!   (`tenant_id ... DEFAULT 'system'` added, a unique constraint on
//!   `(tenant_id, service_name)`, row-level security with its policies);
//! - the original hub's own multi-tenant start-up schema (`tenant_id`,
//!   `last_seen`, `transport_preferences`, `contract_validated`, fail-open
//!   policies).
//!
//! All three take the same way, run by `migrate::run_with_report` inside the
//! one transaction that also applies the SQL migrations, so an upgrade either
//! happens completely or not at all:
//! 1. [`detect`] reads the catalog and names the state. Anything it does not
//!    recognise is [`SchemaState::Unknown`] and refused before any change.
//! 2. [`stage`] checks that the migrating role owns the old tables and that
//!    every tenant id is one the new schema accepts (refusing otherwise, with
//!    the offenders listed: a tenant id is the key of the tenant's API keys, so
//!    it is the operator's to rename, not ours), drops the old policies, and
//!    renames the old tables out of the way (`hub_upgrade_*`), so that the
//!    first migration creates the new tables as on an empty database. V1's own
//!    single-tenant import (a frozen, already released file) therefore never
//!    runs: one import serves every state.
//! 3. After V1, [`import`] copies the rows tenant by tenant (each tenant's
//!    inserts in its own `app.tenant_id`, as FORCE row-level security
//!    requires even of the owner), renames the old tables `legacy_*` and
//!    returns the [`UpgradeReport`].
//!
//! Column names are spliced into the import statements: they come from the
//! fixed lists of this file, checked against the catalog, never from data.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use hub_core::RegistryError;
use tokio_postgres::GenericClient;

use super::error::from_pg;

/// The tables of the original hub, in import order.
const OLD_TABLES: [&str; 3] = ["service_registry", "health_metrics", "coordination_history"];

/// Tables only this hub's migrations create: without refinery's history they
/// mean a schema half made by hand.
const HUB_TABLES: [&str; 8] = [
    "hub_tenants",
    "tenant_state",
    "hub_outbox",
    "hub_outbox_due",
    "hub_outbox_undeliverable",
    "hub_api_keys",
    "hub_admin_audit",
    "hub_usage_daily",
];

/// Where the old tables wait while V1 creates the new ones.
const STAGING_PREFIX: &str = "hub_upgrade_";

/// Where the old tables stay afterwards, for the operator.
const LEGACY_PREFIX: &str = "legacy_";

/// Columns only the original hub's multi-tenant start-up schema has.
const MULTI_TENANT_COLUMNS: [&str; 3] =
    ["last_seen", "transport_preferences", "contract_validated"];

/// The tenant id rule of the new schema (V1's CHECK), in SQL.
const TENANT_RULE: &str = "^[A-Za-z0-9_-]{1,100}$";

/// The state of the database before anything is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// None of the hub's tables: the migrations create them.
    Fresh,
    /// Migrated by this hub before (refinery's history is there): only the
    /// pending migrations run.
    Current,
    /// The original single-tenant schema.
    LegacySingleTenant,
    /// The single-tenant schema after the seed document's migration SQL.
    LegacySeedMigrated,
    /// The original hub's multi-tenant start-up schema.
    LegacyMultiTenant,
    /// Something else; the reason says what did not fit.
    Unknown(String),
}

impl SchemaState {
    /// Whether the state is one of the original hub's.
    pub fn is_legacy(&self) -> bool {
        matches!(
            self,
            Self::LegacySingleTenant | Self::LegacySeedMigrated | Self::LegacyMultiTenant
        )
    }
}

impl fmt::Display for SchemaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fresh => f.write_str("an empty database"),
            Self::Current => f.write_str("a database migrated by this hub"),
            Self::LegacySingleTenant => {
                f.write_str("the original hub's single-tenant schema (no tenant_id)")
            }
            Self::LegacySeedMigrated => f.write_str(
                "the original single-tenant schema after the seed document's migration SQL (tenant_id added)",
            ),
            Self::LegacyMultiTenant => f.write_str(
                "the original hub's multi-tenant schema (tenant_id, last_seen, transport_preferences, contract_validated)",
            ),
            Self::Unknown(reason) => write!(f, "an unknown schema: {reason}"),
        }
    }
}

/// How a column of an old table is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
    Number,
    Json,
    Time,
    Any,
}

impl Kind {
    fn accepts(self, type_name: &str) -> bool {
        match self {
            Self::Text => matches!(type_name, "varchar" | "text" | "bpchar"),
            Self::Int => matches!(type_name, "int2" | "int4" | "int8"),
            Self::Number => matches!(
                type_name,
                "float4" | "float8" | "numeric" | "int2" | "int4" | "int8"
            ),
            Self::Json => matches!(type_name, "json" | "jsonb"),
            Self::Time => matches!(type_name, "timestamp" | "timestamptz"),
            Self::Any => true,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Int => "an integer",
            Self::Number => "a number",
            Self::Json => "JSON",
            Self::Time => "a timestamp",
            Self::Any => "any type",
        }
    }
}

/// The columns the import reads, per old table: (name, kind, required).
/// Every other column stays behind in the `legacy_*` table and is reported.
fn known_columns(table: &str) -> &'static [(&'static str, Kind, bool)] {
    match table {
        "service_registry" => &[
            ("id", Kind::Any, false),
            ("tenant_id", Kind::Text, false),
            ("service_name", Kind::Text, true),
            ("host", Kind::Text, true),
            ("port", Kind::Int, true),
            ("protocol", Kind::Text, false),
            ("health_endpoint", Kind::Text, false),
            ("version", Kind::Text, false),
            ("metadata", Kind::Json, false),
            ("status", Kind::Text, false),
            ("registered_at", Kind::Time, false),
            ("last_heartbeat", Kind::Time, false),
        ],
        "health_metrics" => &[
            ("id", Kind::Any, false),
            ("tenant_id", Kind::Text, false),
            ("service_name", Kind::Text, true),
            ("status", Kind::Text, false),
            ("response_time_ms", Kind::Number, false),
            ("cpu_usage", Kind::Number, false),
            ("memory_usage", Kind::Number, false),
            ("error_rate", Kind::Number, false),
            ("metadata", Kind::Json, false),
            ("recorded_at", Kind::Time, false),
        ],
        // The whole old row becomes the payload: nothing is left behind.
        "coordination_history" => &[
            ("tenant_id", Kind::Text, false),
            ("service_name", Kind::Text, false),
            ("created_at", Kind::Time, false),
        ],
        _ => &[],
    }
}

/// One old table as the catalog shows it.
#[derive(Debug, Clone)]
struct OldTable {
    name: &'static str,
    /// Column name to type name (`pg_type.typname`), in column order.
    columns: Vec<(String, String)>,
    owner: String,
    owned: bool,
    policies: Vec<String>,
}

impl OldTable {
    fn column(&self, name: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(column, _)| column == name)
            .map(|(_, type_name)| type_name.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.column(name).is_some()
    }

    /// The row's tenant in the new schema: its own, or `system` where it
    /// has none (no column, NULL or empty).
    fn tenant_expr(&self) -> &'static str {
        if self.has("tenant_id") {
            "coalesce(nullif(l.tenant_id::text, ''), 'system')"
        } else {
            "'system'::text"
        }
    }

    fn text(&self, name: &str) -> String {
        if self.has(name) {
            format!("l.{name}::text")
        } else {
            "NULL::text".to_owned()
        }
    }

    /// A timestamp as an instant: the original stored UTC wall-clock times
    /// in `timestamp` columns, which must not be read in the session's zone.
    fn time(&self, name: &str) -> String {
        match self.column(name) {
            Some("timestamp") => format!("(l.{name} AT TIME ZONE 'UTC')"),
            Some(_) => format!("l.{name}::timestamptz"),
            None => "NULL::timestamptz".to_owned(),
        }
    }

    fn json(&self, name: &str) -> String {
        if self.has(name) {
            format!("l.{name}::jsonb")
        } else {
            "NULL::jsonb".to_owned()
        }
    }

    fn number(&self, name: &str) -> String {
        if self.has(name) {
            format!("l.{name}::float8")
        } else {
            "NULL::float8".to_owned()
        }
    }

    fn staging(&self) -> String {
        format!("{STAGING_PREFIX}{}", self.name)
    }

    fn legacy(&self) -> String {
        format!("{LEGACY_PREFIX}{}", self.name)
    }

    /// Columns the import does not read.
    fn unmapped(&self) -> Vec<&str> {
        let known = known_columns(self.name);
        if self.name == "coordination_history" {
            return Vec::new();
        }
        self.columns
            .iter()
            .map(|(column, _)| column.as_str())
            .filter(|column| !known.iter().any(|(name, _, _)| name == column))
            .collect()
    }
}

/// What [`detect`] found, kept for [`stage`] and [`import`].
#[derive(Debug, Clone)]
pub struct LegacySchema {
    state: SchemaState,
    tables: Vec<OldTable>,
}

impl LegacySchema {
    /// The state found.
    pub fn state(&self) -> &SchemaState {
        &self.state
    }
}

/// Reads the catalog of the current schema and names its state. Changes
/// nothing. Only the state is returned; [`inspect`] also keeps what the
/// upgrade needs.
pub async fn detect(client: &impl GenericClient) -> Result<SchemaState, RegistryError> {
    Ok(inspect(client).await?.state)
}

/// Like [`detect`], keeping the old tables' description for the upgrade.
pub async fn inspect(client: &impl GenericClient) -> Result<LegacySchema, RegistryError> {
    let unknown = |reason: String| LegacySchema {
        state: SchemaState::Unknown(reason),
        tables: Vec::new(),
    };
    let rows = client
        .query(
            "SELECT c.relname::text, c.relkind::text, pg_get_userbyid(c.relowner)::text, \
                    pg_has_role(current_user, c.relowner, 'USAGE') \
             FROM pg_class c \
             WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
               AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            &[],
        )
        .await
        .map_err(from_pg)?;
    let mut relations: HashMap<String, (String, String, bool)> = HashMap::new();
    for row in &rows {
        let name: String = row.try_get(0).map_err(from_pg)?;
        let kind: String = row.try_get(1).map_err(from_pg)?;
        let owner: String = row.try_get(2).map_err(from_pg)?;
        let owned: bool = row.try_get(3).map_err(from_pg)?;
        relations.insert(name, (kind, owner, owned));
    }

    if relations.contains_key("refinery_schema_history") {
        // An empty history is what a failed first attempt of an older
        // `cargo xtask migrate` left behind (refinery creates the table in
        // a transaction of its own): it says nothing about the schema.
        let recorded: i64 = client
            .query_one("SELECT count(*) FROM refinery_schema_history", &[])
            .await
            .map_err(from_pg)?
            .try_get(0)
            .map_err(from_pg)?;
        if recorded > 0 {
            if relations.contains_key("hub_tenants") {
                return Ok(LegacySchema {
                    state: SchemaState::Current,
                    tables: Vec::new(),
                });
            }
            return Ok(unknown(format!(
                "refinery_schema_history records {recorded} applied migration(s), but this hub's table hub_tenants does not exist: the history belongs to another application or the schema was changed by hand"
            )));
        }
    }
    if let Some(table) = HUB_TABLES.iter().find(|t| relations.contains_key(**t)) {
        return Ok(unknown(format!(
            "table {table} of this hub exists but no migration is recorded in refinery_schema_history: the schema was made or changed by hand"
        )));
    }
    for table in OLD_TABLES {
        for name in [
            format!("{STAGING_PREFIX}{table}"),
            format!("{LEGACY_PREFIX}{table}"),
        ] {
            if relations.contains_key(&name) {
                return Ok(unknown(format!(
                    "a table {name} exists, as after an earlier upgrade, but the migration history does not record one: rename or drop {name} if it is no longer needed"
                )));
            }
        }
    }
    let present: Vec<&'static str> = OLD_TABLES
        .into_iter()
        .filter(|t| relations.contains_key(*t))
        .collect();
    if present.is_empty() {
        return Ok(LegacySchema {
            state: SchemaState::Fresh,
            tables: Vec::new(),
        });
    }
    if !present.contains(&"service_registry") {
        return Ok(unknown(format!(
            "{} exist(s) without service_registry, which the original hub always had",
            present.join(" and ")
        )));
    }

    let mut tables = Vec::new();
    for name in present {
        let Some((kind, owner, owned)) = relations.get(name) else {
            continue;
        };
        if kind != "r" && kind != "p" {
            return Ok(unknown(format!("{name} is not a table (relkind {kind:?})")));
        }
        let columns = client
            .query(
                "SELECT a.attname::text, t.typname::text \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = (quote_ident(current_schema()) || '.' || quote_ident($1))::regclass \
                   AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&name],
            )
            .await
            .map_err(from_pg)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<(String, String)>, tokio_postgres::Error>>()
            .map_err(from_pg)?;
        let policies = client
            .query(
                "SELECT polname::text FROM pg_policy \
                 WHERE polrelid = (quote_ident(current_schema()) || '.' || quote_ident($1))::regclass \
                 ORDER BY polname",
                &[&name],
            )
            .await
            .map_err(from_pg)?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<String>, _>>()
            .map_err(from_pg)?;
        let table = OldTable {
            name,
            columns,
            owner: owner.clone(),
            owned: *owned,
            policies,
        };
        for (column, kind, required) in known_columns(name) {
            match table.column(column) {
                None if *required => {
                    return Ok(unknown(format!(
                        "{name} has no column {column}, which the original hub's {name} had"
                    )));
                }
                Some(type_name) if !kind.accepts(type_name) => {
                    return Ok(unknown(format!(
                        "{name}.{column} is of type {type_name}, not {} as in the original hub",
                        kind.describe()
                    )));
                }
                _ => {}
            }
        }
        tables.push(table);
    }

    let with_tenant: Vec<&str> = tables
        .iter()
        .filter(|t| t.has("tenant_id"))
        .map(|t| t.name)
        .collect();
    let state = if with_tenant.is_empty() {
        SchemaState::LegacySingleTenant
    } else if with_tenant.len() != tables.len() {
        return Ok(unknown(format!(
            "only {} of the original tables have a tenant_id column: the tenant migration was applied in part",
            with_tenant.join(" and ")
        )));
    } else if tables[0]
        .columns
        .iter()
        .any(|(column, _)| MULTI_TENANT_COLUMNS.contains(&column.as_str()))
    {
        SchemaState::LegacyMultiTenant
    } else {
        SchemaState::LegacySeedMigrated
    };
    Ok(LegacySchema { state, tables })
}

/// Why an upgrade was refused (nothing was changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Checks what the upgrade needs, then moves the old tables out of the new
/// ones' way. Run inside the migration's transaction, before V1.
///
/// Refuses (`Ok(Err(..))`) when the migrating role does not own the old
/// tables or when a row's tenant id is not a valid tenant id of the new
/// schema.
pub async fn stage(
    client: &impl GenericClient,
    schema: &LegacySchema,
) -> Result<Result<(), Refusal>, RegistryError> {
    if let Some(table) = schema.tables.iter().find(|t| !t.owned) {
        return Ok(Err(Refusal(format!(
            "the original hub's table {} is owned by {:?}, and only its owner may rename it: run the upgrade with POSTGRES_USER={} (or as a superuser), then give the server its own login with --app-user. Nothing was changed.",
            table.name, table.owner, table.owner
        ))));
    }
    if let Some(refusal) = invalid_tenants(client, schema).await? {
        return Ok(Err(refusal));
    }
    for table in &schema.tables {
        // The old policies pass every row when `app.tenant_id` is unset;
        // the legacy tables keep row-level security enabled without any
        // policy, so a role that still holds grants on them sees no rows.
        for policy in &table.policies {
            client
                .batch_execute(&format!("DROP POLICY {} ON {}", quote(policy), table.name))
                .await
                .map_err(from_pg)?;
        }
        // FORCE without policies would hide the rows from the owner too,
        // who must read them now and check them later.
        client
            .batch_execute(&format!(
                "ALTER TABLE {name} NO FORCE ROW LEVEL SECURITY; \
                 ALTER TABLE {name} RENAME TO {staging}",
                name = table.name,
                staging = table.staging()
            ))
            .await
            .map_err(from_pg)?;
    }
    // A renamed table keeps its indexes' and serial sequences' names
    // (`health_metrics_pkey`, `health_metrics_id_seq`), which the new
    // tables need: they take the `legacy_` prefix now (as V1 does).
    client
        .batch_execute(&format!(
            "DO $$
             DECLARE legacy record;
             BEGIN
                 FOR legacy IN
                     SELECT 'INDEX' AS kind, i.indexrelid::regclass::text AS object, c.relname
                     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                     WHERE i.indrelid IN ({staged})
                     UNION ALL
                     SELECT 'SEQUENCE', d.objid::regclass::text, c.relname
                     FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
                     WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                       AND c.relkind = 'S' AND d.deptype IN ('a', 'i')
                       AND d.refobjid IN ({staged})
                 LOOP
                     EXECUTE format('ALTER %s %s RENAME TO %I',
                                    legacy.kind, legacy.object, left('{LEGACY_PREFIX}' || legacy.relname, 63));
                 END LOOP;
             END
             $$",
            staged = schema
                .tables
                .iter()
                .map(|t| format!("to_regclass('{}')", t.staging()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await
        .map_err(from_pg)?;
    Ok(Ok(()))
}

/// The rows whose tenant id the new schema would refuse, as a refusal that
/// lists them (at most 20 ids) and says how to fix them.
async fn invalid_tenants(
    client: &impl GenericClient,
    schema: &LegacySchema,
) -> Result<Option<Refusal>, RegistryError> {
    let mut offenders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for table in schema.tables.iter().filter(|t| t.has("tenant_id")) {
        let rows = client
            .query(
                &format!(
                    "SELECT {tenant} AS tenant, count(*) FROM {name} l \
                     WHERE {tenant} !~ '{TENANT_RULE}' GROUP BY 1 ORDER BY 1",
                    tenant = table.tenant_expr(),
                    name = table.name
                ),
                &[],
            )
            .await
            .map_err(from_pg)?;
        for row in &rows {
            let tenant: String = row.try_get(0).map_err(from_pg)?;
            let count: i64 = row.try_get(1).map_err(from_pg)?;
            offenders
                .entry(tenant)
                .or_default()
                .push(format!("{} {count} row(s)", table.name));
        }
    }
    if offenders.is_empty() {
        return Ok(None);
    }
    let total = offenders.len();
    let mut listed: Vec<String> = offenders
        .iter()
        .take(20)
        .map(|(tenant, tables)| format!("{tenant:?} ({})", tables.join(", ")))
        .collect();
    if total > 20 {
        listed.push(format!("and {} more", total - 20));
    }
    let example = offenders.keys().next().cloned().unwrap_or_default();
    Ok(Some(Refusal(format!(
        "{total} tenant id(s) of the original hub are not valid tenant ids here (1 to 100 letters, digits, '_' or '-'): {}. \
         Nothing was changed. Choose a new id for each and rename it in the old tables as their owner, for example \
         UPDATE service_registry SET tenant_id = 'new_id' WHERE tenant_id = '{}' (and the same on health_metrics and coordination_history), \
         bind the tenant's API keys to the new id, then run the upgrade again.",
        listed.join("; "),
        example.replace('\'', "''")
    ))))
}

/// Quotes an identifier (a policy name may hold anything).
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Rows of one tenant in one table: found in the old table, moved to the new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRows {
    /// The tenant in the new schema.
    pub tenant: String,
    /// Rows of this tenant in the old table.
    pub found: u64,
    /// Rows copied into the new table.
    pub moved: u64,
}

/// What happened to one old table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    /// The new table the rows went to.
    pub table: String,
    /// The old table, kept under this name.
    pub legacy_table: String,
    /// Rows per tenant, by tenant id.
    pub tenants: Vec<TenantRows>,
    /// Columns the new schema has no place for, with the number of rows
    /// that hold a value in each: kept only in the legacy table.
    pub unmapped_columns: Vec<(String, u64)>,
}

impl TableReport {
    /// Rows of `tenant` moved into the new table (0 if none).
    pub fn moved(&self, tenant: &str) -> u64 {
        self.tenants
            .iter()
            .find(|t| t.tenant == tenant)
            .map_or(0, |t| t.moved)
    }

    fn left_behind(&self) -> u64 {
        self.tenants
            .iter()
            .map(|t| t.found - t.moved.min(t.found))
            .sum()
    }
}

/// What an upgrade moved and what it left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeReport {
    /// The state upgraded from.
    pub from: SchemaState,
    /// One entry per old table, in import order.
    pub tables: Vec<TableReport>,
    /// The old row-level security policies dropped, as `policy on table`.
    pub dropped_policies: Vec<String>,
}

impl UpgradeReport {
    /// The report of the table that became `table`.
    pub fn table(&self, table: &str) -> Option<&TableReport> {
        self.tables.iter().find(|t| t.table == table)
    }
}

impl fmt::Display for UpgradeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "upgraded {}", self.from)?;
        writeln!(f, "moved (rows per table and tenant, moved of found):")?;
        for table in &self.tables {
            let tenants: Vec<String> = table
                .tenants
                .iter()
                .map(|t| format!("{} {} of {}", t.tenant, t.moved, t.found))
                .collect();
            let tenants = if tenants.is_empty() {
                "no rows".to_owned()
            } else {
                tenants.join(", ")
            };
            writeln!(f, "  {}: {tenants}", table.table)?;
        }
        let mut left = Vec::new();
        for table in &self.tables {
            let rows = table.left_behind();
            if rows > 0 {
                left.push(format!(
                    "{} keeps {rows} row(s) that do not fit the new schema (see docs/POSTGRES.md for the rules) or repeat a service of the same tenant",
                    table.legacy_table
                ));
            }
            if !table.unmapped_columns.is_empty() {
                let columns: Vec<String> = table
                    .unmapped_columns
                    .iter()
                    .map(|(column, values)| format!("{column} ({values} row(s) with a value)"))
                    .collect();
                left.push(format!(
                    "{} keeps the columns the new schema has no place for: {}",
                    table.legacy_table,
                    columns.join(", ")
                ));
            }
        }
        if left.is_empty() {
            writeln!(f, "left behind: nothing")?;
        } else {
            writeln!(f, "left behind:")?;
            for line in left {
                writeln!(f, "  {line}")?;
            }
        }
        if !self.dropped_policies.is_empty() {
            writeln!(
                f,
                "dropped the old row-level security policies: {}",
                self.dropped_policies.join(", ")
            )?;
        }
        let legacy: Vec<&str> = self
            .tables
            .iter()
            .map(|t| t.legacy_table.as_str())
            .collect();
        write!(
            f,
            "the old tables are kept as {} (never granted to the server); drop them once you have checked the import",
            legacy.join(", ")
        )
    }
}

/// Copies the staged old rows into the new tables, tenant by tenant, then
/// renames the old tables `legacy_*`. Run inside the migration's
/// transaction, after V1 created the new tables and before later migrations
/// (which then treat the imported rows like any others).
///
/// What is copied, and how values are mapped, is the rule of V1's original
/// single-tenant import (docs/POSTGRES.md), applied to each row's own tenant.
pub async fn import(
    client: &impl GenericClient,
    schema: &LegacySchema,
) -> Result<UpgradeReport, RegistryError> {
    // Rows found per table and tenant, before anything is copied.
    let mut found: Vec<BTreeMap<String, u64>> = Vec::new();
    let mut tenants: Vec<String> = Vec::new();
    if schema.state == SchemaState::LegacySingleTenant {
        // As V1 did: the single tenant exists even with no rows.
        tenants.push("system".to_owned());
    }
    for table in &schema.tables {
        let rows = client
            .query(
                &format!(
                    "SELECT {tenant}, count(*) FROM {staging} l GROUP BY 1 ORDER BY 1",
                    tenant = table.tenant_expr(),
                    staging = table.staging()
                ),
                &[],
            )
            .await
            .map_err(from_pg)?;
        let mut counts = BTreeMap::new();
        for row in &rows {
            let tenant: String = row.try_get(0).map_err(from_pg)?;
            let count: i64 = row.try_get(1).map_err(from_pg)?;
            if !tenants.contains(&tenant) {
                tenants.push(tenant.clone());
            }
            counts.insert(tenant, u64::try_from(count).unwrap_or(0));
        }
        found.push(counts);
    }
    tenants.sort();

    let mut moved: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); schema.tables.len()];
    for tenant in &tenants {
        // Every insert below runs as the owner, whom FORCE row-level
        // security binds too: the transaction acts as this tenant.
        client
            .execute("SELECT set_config('app.tenant_id', $1, true)", &[tenant])
            .await
            .map_err(from_pg)?;
        client
            .execute(
                "INSERT INTO hub_tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[tenant],
            )
            .await
            .map_err(from_pg)?;
        for (index, table) in schema.tables.iter().enumerate() {
            let sql = match table.name {
                "service_registry" => services_sql(table),
                "health_metrics" => metrics_sql(table),
                _ => history_sql(table),
            };
            let rows = client.execute(&sql, &[tenant]).await.map_err(from_pg)?;
            moved[index].insert(tenant.clone(), rows);
            if table.name == "service_registry" {
                client
                    .execute(
                        "INSERT INTO tenant_state (tenant_id, revision) \
                         SELECT $1::varchar, count(*) FROM service_registry WHERE tenant_id = $1::varchar",
                        &[tenant],
                    )
                    .await
                    .map_err(from_pg)?;
            }
        }
    }
    // Leave no tenant set for whatever runs next in this transaction.
    client
        .execute("SELECT set_config('app.tenant_id', '', true)", &[])
        .await
        .map_err(from_pg)?;

    let mut tables = Vec::new();
    for (index, table) in schema.tables.iter().enumerate() {
        let unmapped = table.unmapped();
        let mut unmapped_columns = Vec::new();
        if !unmapped.is_empty() {
            let counts: Vec<String> = unmapped.iter().map(|c| format!("count({c})")).collect();
            let row = client
                .query_one(
                    &format!("SELECT {} FROM {}", counts.join(", "), table.staging()),
                    &[],
                )
                .await
                .map_err(from_pg)?;
            for (position, column) in unmapped.iter().enumerate() {
                let values: i64 = row.try_get(position).map_err(from_pg)?;
                unmapped_columns.push(((*column).to_owned(), u64::try_from(values).unwrap_or(0)));
            }
        }
        client
            .batch_execute(&format!(
                "ALTER TABLE {} RENAME TO {}",
                table.staging(),
                table.legacy()
            ))
            .await
            .map_err(from_pg)?;
        let tenants = found[index]
            .iter()
            .map(|(tenant, found)| TenantRows {
                tenant: tenant.clone(),
                found: *found,
                moved: moved[index].get(tenant).copied().unwrap_or(0),
            })
            .collect();
        tables.push(TableReport {
            table: table.name.to_owned(),
            legacy_table: table.legacy(),
            tenants,
            unmapped_columns,
        });
    }
    let dropped_policies = schema
        .tables
        .iter()
        .flat_map(|t| t.policies.iter().map(move |p| format!("{p} on {}", t.name)))
        .collect();
    Ok(UpgradeReport {
        from: schema.state.clone(),
        tables,
        dropped_policies,
    })
}

/// The status mapping of the original free-text statuses.
fn status_sql(table: &OldTable) -> String {
    format!(
        "CASE lower(coalesce({status}, '')) \
             WHEN 'passing' THEN 'passing' WHEN 'healthy' THEN 'passing' \
             WHEN 'active' THEN 'passing' WHEN 'up' THEN 'passing' \
             WHEN 'warning' THEN 'warning' WHEN 'degraded' THEN 'warning' \
             ELSE 'critical' END",
        status = table.text("status")
    )
}

/// One tenant's services (`$1`): rows that fit the new constraints, one per
/// service name (a row that carries the tenant id itself wins over one
/// without, then the latest heartbeat), revisions 1..n by name.
fn services_sql(table: &OldTable) -> String {
    let registered = table.time("registered_at");
    let heartbeat = format!(
        "coalesce({}, {registered}, now())",
        table.time("last_heartbeat")
    );
    let preference = if table.has("tenant_id") {
        "(l.tenant_id IS NOT DISTINCT FROM $1::text) DESC, "
    } else {
        ""
    };
    format!(
        "INSERT INTO service_registry (
             tenant_id, service_name, instance_id, host, port, protocol, health_endpoint,
             version, tags, metadata, ttl_seconds, status, registered_at, last_heartbeat,
             lease_expires_at, revision)
         SELECT $1::text, l.service_name, l.service_name, l.host, l.port,
                CASE WHEN lower({protocol}) IN ('http', 'https', 'grpc', 'tcp', 'ws', 'wss')
                     THEN lower({protocol}) ELSE 'http' END,
                CASE WHEN {endpoint} LIKE '/%' AND length({endpoint}) <= 255
                     THEN {endpoint} ELSE '/health' END,
                NULLIF(left({version}, 64), ''),
                '{{}}',
                CASE WHEN jsonb_typeof({metadata}) = 'object' THEN {metadata} ELSE '{{}}' END,
                30,
                {status},
                l.hub_registered_at, l.hub_heartbeat,
                -- Imported instances start with one lease from the upgrade,
                -- so live services keep them with their next heartbeat.
                now() + interval '30 seconds',
                row_number() OVER (ORDER BY l.service_name)
         FROM (
             SELECT DISTINCT ON (l.service_name) l.*,
                    coalesce({registered}, now()) AS hub_registered_at, {heartbeat} AS hub_heartbeat
             FROM {staging} l
             WHERE {tenant} = $1::text
               AND l.service_name ~ '^[A-Za-z0-9_.-]{{1,128}}$'
               AND l.host ~ '^[A-Za-z0-9_.:-]{{1,255}}$'
               AND l.port BETWEEN 1 AND 65535
             ORDER BY l.service_name, {preference}{heartbeat} DESC
         ) l",
        protocol = table.text("protocol"),
        endpoint = table.text("health_endpoint"),
        version = table.text("version"),
        metadata = table.json("metadata"),
        status = status_sql(table),
        staging = table.staging(),
        tenant = table.tenant_expr(),
    )
}

/// One tenant's metrics (`$1`), values out of their range emptied.
fn metrics_sql(table: &OldTable) -> String {
    let response = table.number("response_time_ms");
    let cpu = table.number("cpu_usage");
    let memory = table.number("memory_usage");
    let errors = table.number("error_rate");
    let metadata = table.json("metadata");
    format!(
        "INSERT INTO health_metrics (tenant_id, service_name, instance_id, status, response_time_ms,
                                     cpu_usage, memory_usage, error_rate, metadata, recorded_at)
         SELECT $1::text, l.service_name, l.service_name, {status},
                CASE WHEN {response} >= 0 THEN {response} END,
                CASE WHEN {cpu} BETWEEN 0 AND 100 THEN {cpu} END,
                CASE WHEN {memory} >= 0 THEN {memory} END,
                CASE WHEN {errors} BETWEEN 0 AND 1 THEN {errors} END,
                CASE WHEN jsonb_typeof({metadata}) = 'object' THEN {metadata} ELSE '{{}}' END,
                coalesce({recorded}, now())
         FROM {staging} l
         WHERE {tenant} = $1::text AND l.service_name ~ '^[A-Za-z0-9_.-]{{1,128}}$'",
        status = status_sql(table),
        recorded = table.time("recorded_at"),
        staging = table.staging(),
        tenant = table.tenant_expr(),
    )
}

/// One tenant's audit rows (`$1`): every row, kept as history under
/// revision 0 with the whole old row as the payload.
fn history_sql(table: &OldTable) -> String {
    let service = format!(
        "left(coalesce(nullif({}, ''), 'unknown'), 128)",
        table.text("service_name")
    );
    format!(
        "INSERT INTO coordination_history (tenant_id, revision, event_type, service_name,
                                           instance_id, actor, occurred_at, payload)
         SELECT $1::text, 0, 'service.updated', {service}, {service}, 'legacy-import',
                coalesce({created}, now()), to_jsonb(l)
         FROM {staging} l
         WHERE {tenant} = $1::text",
        created = table.time("created_at"),
        staging = table.staging(),
        tenant = table.tenant_expr(),
    )
}
