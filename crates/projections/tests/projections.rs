//! Projection semantics on SQLite and PostgreSQL: folding, exactly-once
//! checkpoints, sandbox limits, lifecycle, restart and queries.

mod common;

use std::collections::BTreeMap;

use common::{append, Fixture, WAIT};
use serde_json::json;
use trellis_projections::{DocumentQuery, ProjectionDefinition, ProjectionError, RunState, Source};
use trellis_store::Backend;

both_backends!(
    folds_orders_into_one_document_per_customer,
    a_failed_batch_rolls_back_and_is_refolded_exactly_once,
    runaway_scripts_are_stopped_by_the_limits_and_fault_the_projection,
    reset_and_rebuild_reproduce_the_same_read_model,
    pause_holds_the_checkpoint_and_resume_catches_up,
    a_restart_resumes_from_the_checkpoint,
    queries_filter_sort_and_paginate_and_sql_reads_the_same_table,
    category_source_and_type_filter_limit_what_is_folded,
);

pub const ORDERS: &str = r#"
fn id(event) { event.data.customer }
fn OrderPlaced(doc, event) {
    if doc == () { doc = #{ customer: event.data.customer, orders: 0, total: 0 }; }
    doc.orders += 1;
    doc.total += event.data.amount;
    doc
}
fn OrderCancelled(doc, event) {
    if doc == () { return (); }
    doc.orders -= 1;
    doc.total -= event.data.amount;
    doc
}
fn CustomerForgotten(doc, event) { () }
"#;

fn orders() -> ProjectionDefinition {
    ProjectionDefinition::new("orders", Source::All, ORDERS)
}

async fn settle(f: &Fixture, name: &str) {
    let head = f.events.head_position().await.unwrap();
    f.projections.wait_for(name, head, WAIT).await.unwrap();
}

/// Every document of a projection, by id.
async fn all_docs(f: &Fixture, name: &str) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let mut q = DocumentQuery::default().page(7, 0);
    loop {
        let page = f.projections.query(name, &q).await.unwrap();
        for d in page.documents {
            out.insert(d.id, d.doc);
        }
        match page.next_offset {
            Some(o) => q.offset = o,
            None => return out,
        }
    }
}

/// Appends a deterministic order history and returns the expected totals per customer.
async fn place_orders(f: &Fixture, n: u64) -> BTreeMap<String, (i64, i64)> {
    let mut expected = BTreeMap::new();
    for i in 0..n {
        let customer = format!("c{}", i % 5);
        let amount = (i * 7 % 13 + 1) as i64;
        append(
            &f.events,
            &format!("order-{i}"),
            "OrderPlaced",
            json!({ "customer": customer, "amount": amount }),
        )
        .await;
        let e = expected.entry(customer).or_insert((0, 0));
        e.0 += 1;
        e.1 += amount;
    }
    expected
}

fn check_totals(
    docs: &BTreeMap<String, serde_json::Value>,
    expected: &BTreeMap<String, (i64, i64)>,
) {
    assert_eq!(docs.len(), expected.len(), "documents: {docs:?}");
    for (customer, (orders, total)) in expected {
        let d = &docs[customer];
        assert_eq!(d["orders"], json!(orders), "{customer}: {d}");
        assert_eq!(d["total"], json!(total), "{customer}: {d}");
    }
}

async fn folds_orders_into_one_document_per_customer(f: &mut Fixture) {
    f.projections.create(orders()).await.unwrap();
    let mut expected = place_orders(f, 40).await;
    append(
        &f.events,
        "order-0",
        "OrderCancelled",
        json!({"customer": "c0", "amount": 1}),
    )
    .await;
    let e = expected.get_mut("c0").unwrap();
    e.0 -= 1;
    e.1 -= 1;
    append(
        &f.events,
        "cust-c4",
        "CustomerForgotten",
        json!({"customer": "c4"}),
    )
    .await;
    expected.remove("c4");
    append(&f.events, "other-1", "Unrelated", json!({})).await;
    settle(f, "orders").await;
    check_totals(&all_docs(f, "orders").await, &expected);
    let status = f.projections.status("orders").await.unwrap();
    assert_eq!(status.state, RunState::Running);
    assert_eq!(status.position, f.events.head_position().await.unwrap());
    assert_eq!(status.lag, 0);
    assert_eq!(status.events_processed, 43);
    let doc = f
        .projections
        .get_document("orders", "c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(doc.doc["customer"], json!("c1"));
    assert!(f
        .projections
        .get_document("orders", "c4")
        .await
        .unwrap()
        .is_none());
}

async fn a_failed_batch_rolls_back_and_is_refolded_exactly_once(f: &mut Fixture) {
    f.projections.create(orders()).await.unwrap();
    let first = place_orders(f, 10).await;
    settle(f, "orders").await;
    check_totals(&all_docs(f, "orders").await, &first);
    // The next three batch transactions write the read model, then fail before
    // the checkpoint: each must roll back whole, or totals would double count.
    f.projections.inject_batch_failures("orders", 3).unwrap();
    let mut expected = first.clone();
    for (customer, (orders, total)) in place_orders(f, 30).await {
        let e = expected.entry(customer).or_insert((0, 0));
        e.0 += orders;
        e.1 += total;
    }
    settle(f, "orders").await;
    assert_eq!(
        f.projections.inject_batch_failures("orders", 0).unwrap(),
        0,
        "all three failures happened"
    );
    check_totals(&all_docs(f, "orders").await, &expected);
    let status = f.projections.status("orders").await.unwrap();
    assert_eq!(status.events_processed, 40);
    assert_eq!(status.last_error, None, "cleared by the successful batch");
}

async fn runaway_scripts_are_stopped_by_the_limits_and_fault_the_projection(f: &mut Fixture) {
    let script = r#"
        fn Good(doc, event) { if doc == () { doc = #{ n: 0 }; } doc.n += 1; doc }
        fn Spin(doc, event) { loop { } }
        fn Hoard(doc, event) { let a = []; loop { a.push("xxxxxxxxxxxxxxxx"); } }
        fn Grow(doc, event) { let s = "x"; loop { s += s; } }
        fn Deep(doc, event) { Deep(doc, event) }
    "#;
    for (bad, expect) in [
        ("Spin", "operations"),
        ("Hoard", "memory limit"),
        ("Grow", "memory limit"),
        ("Deep", "call depth"),
    ] {
        let name = format!("runaway-{}", bad.to_lowercase());
        let stream = format!("s-{bad}");
        f.projections
            .create(ProjectionDefinition::new(
                &name,
                Source::Stream(stream.clone()),
                script,
            ))
            .await
            .unwrap();
        append(&f.events, &stream, "Good", json!({})).await;
        let good = append(&f.events, &stream, "Good", json!({})).await;
        let bad_at = append(&f.events, &stream, bad, json!({})).await;
        append(&f.events, &stream, "Good", json!({})).await;
        // The projection stops at the bad event, having committed the ones before it.
        f.projections.wait_for(&name, good, WAIT).await.unwrap();
        let status = wait_state(f, &name, RunState::Faulted).await;
        assert_eq!(status.position, good);
        let fault = status.fault.unwrap();
        assert_eq!(fault.position, bad_at);
        assert!(fault.message.contains(expect), "{bad}: {}", fault.message);
        assert!(fault.message.contains(bad), "{}", fault.message);
        let doc = f
            .projections
            .get_document(&name, &stream)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(doc.doc["n"], json!(2));
        // Fixed, it goes on from the event it stopped at.
        let fixed = script.replace(
            &format!("fn {bad}(doc, event)"),
            &format!("fn {bad}(doc, event) {{ doc }} fn unused_{bad}(doc, event)"),
        );
        f.projections.update_script(&name, &fixed).await.unwrap();
        settle_at(f, &name, bad_at + 1).await;
        let status = f.projections.status(&name).await.unwrap();
        assert_eq!(status.state, RunState::Running);
        assert!(status.fault.is_none());
        let doc = f
            .projections
            .get_document(&name, &stream)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(doc.doc["n"], json!(3));
    }
}

async fn settle_at(f: &Fixture, name: &str, position: u64) {
    f.projections.wait_for(name, position, WAIT).await.unwrap();
}

async fn wait_state(
    f: &Fixture,
    name: &str,
    state: RunState,
) -> trellis_projections::ProjectionStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = f.projections.status(name).await.unwrap();
        if s.state == state {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became {state:?}: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn reset_and_rebuild_reproduce_the_same_read_model(f: &mut Fixture) {
    f.projections.create(orders()).await.unwrap();
    let expected = place_orders(f, 50).await;
    settle(f, "orders").await;
    let before = all_docs(f, "orders").await;
    check_totals(&before, &expected);

    f.projections.rebuild("orders").await.unwrap();
    settle(f, "orders").await;
    assert_eq!(all_docs(f, "orders").await, before);
    assert_eq!(
        f.projections
            .status("orders")
            .await
            .unwrap()
            .events_processed,
        50
    );

    f.projections.reset("orders").await.unwrap();
    let status = f.projections.status("orders").await.unwrap();
    assert_eq!((status.state, status.position), (RunState::Paused, 0));
    assert_eq!(status.lag, f.events.head_position().await.unwrap());
    assert!(all_docs(f, "orders").await.is_empty());
    f.projections.resume("orders").await.unwrap();
    settle(f, "orders").await;
    assert_eq!(all_docs(f, "orders").await, before);
}

async fn pause_holds_the_checkpoint_and_resume_catches_up(f: &mut Fixture) {
    f.projections.create(orders()).await.unwrap();
    place_orders(f, 5).await;
    settle(f, "orders").await;
    f.projections.pause("orders").await.unwrap();
    let paused_at = f.projections.status("orders").await.unwrap().position;
    let expected = place_orders(f, 10).await;
    // A paused runner is idle on its command channel, so nothing can move the
    // checkpoint; several poll intervals pass to make sure.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status = f.projections.status("orders").await.unwrap();
    assert_eq!(
        (status.state, status.position),
        (RunState::Paused, paused_at)
    );
    assert_eq!(status.lag, 10);
    f.projections.resume("orders").await.unwrap();
    settle(f, "orders").await;
    let docs = all_docs(f, "orders").await;
    assert_eq!(docs["c0"]["orders"], json!(expected["c0"].0 + 1));
    assert_eq!(
        f.projections.status("orders").await.unwrap().state,
        RunState::Running
    );
}

async fn a_restart_resumes_from_the_checkpoint(f: &mut Fixture) {
    f.projections.create(orders()).await.unwrap();
    let mut expected = place_orders(f, 20).await;
    settle(f, "orders").await;
    f.projections.shutdown().await;
    for (customer, (orders, total)) in place_orders(f, 15).await {
        let e = expected.entry(customer).or_insert((0, 0));
        e.0 += orders;
        e.1 += total;
    }
    f.reopen().await;
    assert_eq!(f.projections.names(), vec!["orders".to_owned()]);
    settle(f, "orders").await;
    check_totals(&all_docs(f, "orders").await, &expected);
    assert_eq!(
        f.projections
            .status("orders")
            .await
            .unwrap()
            .events_processed,
        35
    );
}

async fn queries_filter_sort_and_paginate_and_sql_reads_the_same_table(f: &mut Fixture) {
    let script = r#"
        fn id(event) { event.data.sku }
        fn Stocked(doc, event) { event.data }
    "#;
    f.projections
        .create(ProjectionDefinition::new("stock", Source::All, script))
        .await
        .unwrap();
    for (sku, kind, qty, price) in [
        ("a", "tool", 5, 2.5),
        ("b", "tool", 1, 10.0),
        ("c", "toy", 9, 1.25),
        ("d", "tool", 3, 7.0),
        ("e", "toy", 3, 0.5),
    ] {
        append(
            &f.events,
            &format!("sku-{sku}"),
            "Stocked",
            json!({"sku": sku, "kind": kind, "qty": qty, "price": price, "featured": sku == "d"}),
        )
        .await;
    }
    settle(f, "stock").await;
    let ids = |page: &trellis_projections::DocumentPage| {
        page.documents
            .iter()
            .map(|d| d.id.clone())
            .collect::<Vec<_>>()
    };
    let q = DocumentQuery::default()
        .filter("kind", "tool")
        .sort("qty", true)
        .page(2, 0);
    let page = f.projections.query("stock", &q).await.unwrap();
    assert_eq!(ids(&page), ["a", "d"]);
    assert_eq!(page.next_offset, Some(2));
    let page = f
        .projections
        .query("stock", &q.clone().page(2, 2))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["b"]);
    assert_eq!(page.next_offset, None);
    let q = DocumentQuery::default()
        .filter("qty", 3)
        .sort("price", false);
    assert_eq!(
        ids(&f.projections.query("stock", &q).await.unwrap()),
        ["e", "d"]
    );
    let q = DocumentQuery::default().filter("featured", true);
    assert_eq!(ids(&f.projections.query("stock", &q).await.unwrap()), ["d"]);
    let q = DocumentQuery::default().filter("price", 1.25);
    assert_eq!(ids(&f.projections.query("stock", &q).await.unwrap()), ["c"]);
    let q = DocumentQuery::default().sort("id", true).page(1, 0);
    assert_eq!(ids(&f.projections.query("stock", &q).await.unwrap()), ["e"]);
    // Hostile queries are refused before SQL.
    for q in [
        DocumentQuery::default().filter("kind'; DROP TABLE x; --", "x"),
        DocumentQuery::default().filter("kind", json!(["a"])),
        DocumentQuery::default().sort("a.b", false),
        DocumentQuery::default().page(0, 0),
        DocumentQuery::default().page(100_000, 0),
    ] {
        let err = f.projections.query("stock", &q).await.unwrap_err();
        assert!(matches!(err, ProjectionError::InvalidQuery(_)), "{err}");
    }
    // The read model is an ordinary table.
    let sql = match f.events.namespace().backend() {
        Backend::Sqlite => "SELECT id, json_extract(doc, '$.qty') FROM {ns}projection_documents WHERE projection = 'stock' AND json_extract(doc, '$.kind') = 'toy' ORDER BY id",
        Backend::Postgres => "SELECT id, (doc->>'qty')::bigint FROM {ns}projection_documents WHERE projection = 'stock' AND doc->>'kind' = 'toy' ORDER BY id",
    };
    let rows = f
        .events
        .namespace()
        .read(move |tx| Box::pin(async move { tx.query(sql, &[]).await }))
        .await
        .unwrap();
    let got: Vec<(String, i64)> = rows
        .iter()
        .map(|r| (r.text(0).unwrap().to_owned(), r.int(1).unwrap()))
        .collect();
    assert_eq!(got, [("c".to_owned(), 9), ("e".to_owned(), 3)]);
}

async fn category_source_and_type_filter_limit_what_is_folded(f: &mut Fixture) {
    let script = r#"
        fn handle(doc, event) {
            if doc == () { doc = #{ types: [] }; }
            doc.types.push(event.type);
            doc
        }
    "#;
    f.projections
        .create(
            ProjectionDefinition::new("carts", Source::Category("cart".into()), script)
                .with_event_types(vec!["Added".into(), "Removed".into()]),
        )
        .await
        .unwrap();
    append(&f.events, "cart-1", "Added", json!({})).await;
    append(&f.events, "order-1", "Added", json!({})).await;
    append(&f.events, "cart-1", "Viewed", json!({})).await;
    let last = append(&f.events, "cart-1", "Removed", json!({})).await;
    append(&f.events, "cart-2", "Viewed", json!({})).await;
    settle_at(f, "carts", last).await;
    let docs = all_docs(f, "carts").await;
    assert_eq!(docs.len(), 1);
    assert_eq!(docs["cart-1"]["types"], json!(["Added", "Removed"]));
    let status = f.projections.status("carts").await.unwrap();
    assert_eq!(
        status.lag, 0,
        "only non-matching events lie after the checkpoint"
    );
    f.projections
        .create(ProjectionDefinition::new(
            "ghost",
            Source::Stream("ghost-1".into()),
            script,
        ))
        .await
        .unwrap();
    let status = f.projections.status("ghost").await.unwrap();
    assert_eq!(
        (status.position, status.lag),
        (0, 0),
        "a stream never written has nothing to wait for"
    );
}
