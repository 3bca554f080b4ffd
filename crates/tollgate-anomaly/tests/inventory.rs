//! The data inventory matches what the layer keeps and emits.

use std::sync::Arc;
use std::time::Duration;

use tollgate_anomaly::{Action, AnomalyConfig, AnomalyKind, AnomalyLayer};
use tollgate_core::{MemoryFreezeList, Protection, Retention, Sink, fields};
use tollgate_test_support::pseudonymizer;

#[test]
fn every_piece_of_state_is_declared_with_its_retention() {
    let mut config = AnomalyConfig::default();
    config.volume.ttl = Duration::from_secs(7_200);
    config.penalties.freeze = Duration::from_secs(3_600);
    config.actions = config.actions.set(AnomalyKind::TokenSharing, Action::Freeze);
    let layer = AnomalyLayer::builder(config, pseudonymizer())
        .freeze_list(Arc::new(MemoryFreezeList::new(10)))
        .build()
        .unwrap();
    let inventory = layer.inventory();
    let get = |name: &str| {
        inventory
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} is not in the inventory"))
    };
    // Every piece of detector state the layer reports is declared, as a store with a TTL.
    for state in layer.state_sizes() {
        if state.name == "anomaly.sequence.routes" {
            // Route templates: part of the (non-personal) model entry.
            assert_eq!(get("anomaly.sequence.model").protection, Protection::NotPersonal);
            continue;
        }
        let f = get(state.name);
        assert_eq!(f.sinks, &[Sink::Store], "{}", state.name);
        assert_eq!(f.protection, Protection::KeyedDigest, "{}", state.name);
        assert!(matches!(f.retention, Retention::Ttl { .. }), "{}", state.name);
    }
    // Retention follows the configured TTLs (plus at most an eighth for the sweep).
    match get("anomaly.volume").retention {
        Retention::Ttl { seconds } => assert_eq!(seconds, 7_200 + 900),
        other => panic!("{other:?}"),
    }
    match get("freeze (anomaly)").retention {
        Retention::Ttl { seconds } => assert_eq!(seconds, 3_600),
        other => panic!("{other:?}"),
    }
    let span = get(fields::ANOMALY);
    assert_eq!(span.sinks, &[Sink::Span]);
    assert_eq!(span.protection, Protection::NotPersonal);
    assert_eq!(get("AnomalyTags").retention, Retention::Request);
    assert!(get("rl:anomaly-throttle").sinks.contains(&Sink::Store));
    // The debug header is declared only when it is on.
    assert!(!inventory.iter().any(|f| f.name == "x-tollgate-anomaly"));
    let with_header = AnomalyLayer::builder(AnomalyConfig::default(), pseudonymizer())
        .debug_header(true)
        .build()
        .unwrap()
        .inventory();
    let header = with_header
        .iter()
        .find(|f| f.name == "x-tollgate-anomaly")
        .unwrap();
    assert_eq!(header.sinks, &[Sink::ResponseHeader]);
    // Without a freeze list nothing is frozen, so nothing is declared.
    assert!(!with_header.iter().any(|f| f.name == "freeze (anomaly)"));
}
