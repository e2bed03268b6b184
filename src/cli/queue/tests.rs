//! The operator commands' own tests.

use super::ops::check_target;
use super::transfer::same_node;
use super::*;

fn cancel_target() -> Target {
    Target {
        ids: Vec::new(),
        filter: pb::MessageFilter {
            state: pb::StateFilter::StateReady as i32,
            lane: pb::Lane::Bulk as i32,
            recipient_domain: "example.org".into(),
            ..Default::default()
        },
        older_than: 0,
        all_messages: false,
    }
}

#[test]
fn check_target_protects_the_whole_queue() {
    let mut t = cancel_target();
    assert!(check_target(Op::Cancel, &t).is_ok());
    t.filter = pb::MessageFilter::default();
    let err = check_target(Op::Cancel, &t).unwrap_err().to_string();
    assert!(err.contains("--all-messages"), "{err}");
    t.all_messages = true;
    assert!(check_target(Op::Cancel, &t).is_ok());
    t.ids = vec!["a".into()];
    assert!(check_target(Op::Cancel, &t).is_ok());
    t.filter.recipient_domain = "x.org".into();
    assert!(check_target(Op::Cancel, &t).is_err(), "ids and a filter");
}

#[test]
fn same_node_ignores_case_and_trailing_slash() {
    assert!(same_node("http://A:50051/", "http://a:50051"));
    assert!(!same_node("http://a:50051", "http://b:50051"));
}
