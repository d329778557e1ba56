//! 50 concurrent clients across 5 tenants registering and listing; afterwards each tenant's list is exactly its own.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Backend, spawn_app};

const CLIENTS: usize = 50;
const TENANTS: usize = 5;
const ROUNDS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_keep_tenants_apart_embedded() {
    concurrent_clients_keep_tenants_apart(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_keep_tenants_apart_postgres() {
    concurrent_clients_keep_tenants_apart(Backend::Postgres).await;
}

async fn concurrent_clients_keep_tenants_apart(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let app = std::sync::Arc::new(app);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let app = app.clone();
        clients.push(tokio::spawn(async move {
            let tenant = format!("conc-{}", c % TENANTS);
            let mut mine = BTreeSet::new();
            for n in 0..ROUNDS {
                let service = format!("svc-{}", n % 4);
                let instance = format!("c{c}-n{n}");
                let r = app
                    .register(
                        &tenant,
                        json!({"service_name": service, "instance_id": instance, "host": "10.1.1.1", "port": 9000 + n}),
                    )
                    .await;
                assert_eq!(r.status(), StatusCode::CREATED);
                mine.insert((service, instance));
                // Every read in the middle of the storm holds only this tenant's data.
                let r = app.list(&tenant, "?limit=10000").await;
                assert_eq!(r.status(), StatusCode::OK);
                let body: Value = r.json().await.unwrap();
                for i in body["services"].as_array().unwrap() {
                    assert_eq!(i["tenant_id"], tenant.as_str());
                }
            }
            (tenant, mine)
        }));
    }
    let mut expected: Vec<BTreeSet<(String, String)>> = vec![BTreeSet::new(); TENANTS];
    for client in clients {
        let (tenant, mine) = client.await.unwrap();
        let index: usize = tenant.trim_start_matches("conc-").parse().unwrap();
        expected[index].extend(mine);
    }
    for (index, want) in expected.iter().enumerate() {
        let got: BTreeSet<_> = app
            .list_ids(&format!("conc-{index}"))
            .await
            .into_iter()
            .collect();
        assert_eq!(got.len(), CLIENTS / TENANTS * ROUNDS);
        assert_eq!(&got, want);
    }
}
