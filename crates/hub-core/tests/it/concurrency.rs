//! The memory store under many concurrent writers and readers of many tenants.

use hub_core::ChangeContext;
use std::sync::Arc;

use hub_core::ListQuery;

use crate::support::{registration, tenant, world};

#[test]
fn concurrent_writers_never_mix_tenants() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let w = Arc::new(world());
    rt.block_on(async {
        let mut tasks = Vec::new();
        for worker in 0..40 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                let t = tenant(&format!("tenant{}", worker % 8));
                for n in 0..50 {
                    let svc = format!("svc{}", n % 5);
                    let inst = format!("w{worker}-{n}");
                    w.registry
                        .register(&t, registration(&svc, &inst, 30), &ChangeContext::default())
                        .await
                        .unwrap();
                    let page = w.registry.list(&t, &ListQuery::default()).await.unwrap();
                    assert!(page.instances.iter().all(|i| i.tenant_id() == &t));
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        for k in 0..8 {
            let t = tenant(&format!("tenant{k}"));
            let page = w.registry.list(&t, &ListQuery::default()).await.unwrap();
            // 5 workers per tenant x 50 registrations, all distinct.
            assert_eq!(page.instances.len(), 250);
            assert!(page.instances.iter().all(|i| i.tenant_id() == &t));
            assert_eq!(
                page.revision.get(),
                250,
                "one revision per change, none lost"
            );
        }
    });
}
