//! `ChangeContext`: who made a change and in which request, recorded in the audit trail.

/// Longest actor or request id kept; longer values are cut (they come from
/// headers and fingerprints, which the HTTP edge already bounds).
const MAX_LEN: usize = 128;

/// The origin of a registry change: the actor (an API key's fingerprint, or
/// `lease-reaper` for expiry) and the request id. Stores that keep an audit
/// trail record both with the change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeContext {
    actor: Option<String>,
    request_id: Option<String>,
}

fn bounded(value: Option<String>) -> Option<String> {
    value.map(|mut v| {
        if v.len() > MAX_LEN {
            let mut cut = MAX_LEN;
            while !v.is_char_boundary(cut) {
                cut -= 1;
            }
            v.truncate(cut);
        }
        v
    })
}

impl ChangeContext {
    /// A change made by `actor` in request `request_id`.
    pub fn new(actor: Option<String>, request_id: Option<String>) -> Self {
        Self {
            actor: bounded(actor),
            request_id: bounded(request_id),
        }
    }

    /// The context of changes made by the lease reaper.
    pub fn reaper() -> Self {
        Self::new(Some("lease-reaper".to_owned()), None)
    }

    /// Who made the change.
    pub fn actor(&self) -> Option<&str> {
        self.actor.as_deref()
    }

    /// The request that made it.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let c = ChangeContext::new(Some("é".repeat(100)), Some("r".into()));
        assert!(c.actor().unwrap().len() <= MAX_LEN);
        assert_eq!(c.request_id(), Some("r"));
        assert_eq!(ChangeContext::reaper().actor(), Some("lease-reaper"));
    }
}
