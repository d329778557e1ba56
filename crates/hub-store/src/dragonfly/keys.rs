//! Dragonfly keys: the one place that builds them from a `TenantId`, as `hub:{tenant}:...` with the Redis Cluster hash tag.
//!
//! The braces make Redis Cluster (and Dragonfly's cluster mode) hash only the
//! tenant id, so every key of one tenant lands in one slot and a script that
//! touches several of them (both rate-limit budgets, say) stays valid.
//! Tenant ids hold only `[A-Za-z0-9_-]`: they cannot contain `{`, `}` or `:`,
//! so one tenant's keys can never be spelled as another's.

use hub_core::TenantId;

/// The first part of every key.
pub const PREFIX: &str = "hub";

/// The key `hub:{tenant}:part1:part2...`. Parts are ours (fixed names and
/// hex fingerprints), never client text.
pub fn key(tenant: &TenantId, parts: &[&str]) -> String {
    let mut key = format!("{PREFIX}:{{{}}}", tenant.as_str());
    for part in parts {
        key.push(':');
        key.push_str(part);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_tenant_as_hash_tag() {
        let t = TenantId::parse("acme").unwrap();
        assert_eq!(key(&t, &["rl", "tenant"]), "hub:{acme}:rl:tenant");
        assert_eq!(
            fred::util::redis_keyslot(key(&t, &["rl", "key:ab12"]).as_bytes()),
            fred::util::redis_keyslot(b"acme"),
            "every key of a tenant hashes like the tenant id alone"
        );
    }
}
