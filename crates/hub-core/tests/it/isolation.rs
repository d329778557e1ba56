//! Property: for any interleaving of operations on two tenants, each tenant's list is exactly what it registered minus what it removed.

use hub_core::ChangeContext;
use std::collections::BTreeSet;

use hub_core::{ListCursor, ListQuery, RegistryError};
use proptest::prelude::*;

use crate::support::{registration, runtime, service, tenant, world};

#[derive(Debug, Clone)]
enum Op {
    Register {
        tenant: usize,
        service: usize,
        instance: usize,
    },
    DeregisterOne {
        tenant: usize,
        service: usize,
        instance: usize,
    },
    DeregisterService {
        tenant: usize,
        service: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Small name spaces so that tenants collide on service and instance names,
    // which is exactly where a leak would show.
    prop_oneof![
        4 => (0..2usize, 0..4usize, 0..3usize)
            .prop_map(|(tenant, service, instance)| Op::Register { tenant, service, instance }),
        2 => (0..2usize, 0..4usize, 0..3usize)
            .prop_map(|(tenant, service, instance)| Op::DeregisterOne { tenant, service, instance }),
        1 => (0..2usize, 0..4usize).prop_map(|(tenant, service)| Op::DeregisterService { tenant, service }),
    ]
}

const TENANTS: [&str; 2] = ["tenant-a", "tenant-b"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn each_tenant_sees_exactly_its_own_registrations(ops in prop::collection::vec(op(), 1..60), page in 1i64..5) {
        let rt = runtime();
        rt.block_on(async {
            let w = world();
            let mut model: [BTreeSet<(String, String)>; 2] = Default::default();
            for op in ops {
                match op {
                    Op::Register { tenant: t, service: s, instance: i } => {
                        let (s, i) = (format!("svc{s}"), format!("i{i}"));
                        w.registry.register(&tenant(TENANTS[t]), registration(&s, &i, 30), &ChangeContext::default()).await.unwrap();
                        model[t].insert((s, i));
                    }
                    Op::DeregisterOne { tenant: t, service: s, instance: i } => {
                        let (s, i) = (format!("svc{s}"), format!("i{i}"));
                        let result = w.registry
                            .deregister(&tenant(TENANTS[t]), &service(&s), Some(&i.as_str().try_into().unwrap()), &ChangeContext::default()).await;
                        let existed = model[t].remove(&(s, i));
                        prop_assert_eq!(result.is_ok(), existed);
                        if !existed {
                            prop_assert!(matches!(result, Err(RegistryError::NotFound(_))));
                        }
                    }
                    Op::DeregisterService { tenant: t, service: s } => {
                        let s = format!("svc{s}");
                        let expected = model[t].iter().filter(|(x, _)| *x == s).count();
                        let result = w.registry.deregister(&tenant(TENANTS[t]), &service(&s), None, &ChangeContext::default()).await;
                        model[t].retain(|(x, _)| *x != s);
                        match result {
                            Ok(n) => prop_assert_eq!(n, expected),
                            Err(_) => prop_assert_eq!(expected, 0),
                        }
                    }
                }
            }
            for (t, name) in TENANTS.iter().enumerate() {
                // Walk the whole list page by page: paging must neither lose nor repeat.
                let mut seen = Vec::new();
                let mut cursor: Option<ListCursor> = None;
                loop {
                    let query = ListQuery::new(None, vec![], None, Some(page), cursor.clone()).unwrap();
                    let result = w.registry.list(&tenant(name), &query).await.unwrap();
                    for i in &result.instances {
                        prop_assert_eq!(i.tenant_id().as_str(), *name);
                        seen.push((i.service_name().to_string(), i.instance_id().to_string()));
                    }
                    match result.next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                let expected: Vec<_> = model[t].iter().cloned().collect();
                prop_assert_eq!(&seen, &expected);
                // And get() per service agrees with the model.
                for s in 0..4 {
                    let s = format!("svc{s}");
                    let want: Vec<_> = model[t].iter().filter(|(x, _)| *x == s).map(|(_, i)| i.clone()).collect();
                    match w.registry.get(&tenant(name), &service(&s)).await {
                        Ok(found) => {
                            let got: Vec<_> = found.instances.iter().map(|i| i.instance_id().to_string()).collect();
                            prop_assert_eq!(got, want);
                        }
                        Err(RegistryError::NotFound(_)) => prop_assert!(want.is_empty()),
                        Err(e) => prop_assert!(false, "unexpected error {}", e),
                    }
                }
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn filters_by_service_tag_and_status() {
    use hub_core::{HealthStatus, Heartbeat, Registration, RegistrationInput};
    let w = world();
    let t = tenant("t1");
    for (s, i, tags) in [
        ("api", "a1", vec!["eu", "blue"]),
        ("api", "a2", vec!["eu"]),
        ("db", "d1", vec!["eu", "blue"]),
    ] {
        let r = Registration::try_from(RegistrationInput {
            service_name: s.into(),
            instance_id: Some(i.into()),
            host: "h".into(),
            port: 1,
            tags: tags.into_iter().map(String::from).collect(),
            ..Default::default()
        })
        .unwrap();
        w.registry
            .register(&t, r, &ChangeContext::default())
            .await
            .unwrap();
    }
    w.registry
        .heartbeat(
            &t,
            &service("db"),
            Some(&"d1".try_into().unwrap()),
            &Heartbeat::new(HealthStatus::Warning, None),
            &ChangeContext::default(),
        )
        .await
        .unwrap();
    let ids = |q: ListQuery| {
        let r = &w.registry;
        let t = t.clone();
        async move {
            r.list(&t, &q)
                .await
                .unwrap()
                .instances
                .iter()
                .map(|i| i.instance_id().to_string())
                .collect::<Vec<_>>()
        }
    };
    let q = |s: Option<&str>, tags: &[&str], st: Option<HealthStatus>| {
        ListQuery::new(
            s.map(service),
            tags.iter().map(|t| t.to_string()).collect(),
            st,
            None,
            None,
        )
        .unwrap()
    };
    assert_eq!(ids(q(Some("api"), &[], None)).await, ["a1", "a2"]);
    assert_eq!(ids(q(None, &["blue"], None)).await, ["a1", "d1"]);
    assert_eq!(ids(q(None, &["blue", "eu"], None)).await, ["a1", "d1"]);
    assert_eq!(ids(q(Some("api"), &["blue", "eu"], None)).await, ["a1"]);
    assert_eq!(ids(q(None, &[], Some(HealthStatus::Warning))).await, ["d1"]);
    assert_eq!(ids(q(None, &["green"], None)).await, Vec::<String>::new());
    // The other tenant sees nothing, whatever the filter.
    let other = w
        .registry
        .list(&tenant("t2"), &q(Some("api"), &[], None))
        .await
        .unwrap();
    assert!(other.instances.is_empty());
    assert_eq!(
        other.revision.get(),
        0,
        "revisions are per tenant and reveal nothing"
    );
}
