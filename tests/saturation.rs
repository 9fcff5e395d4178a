//! The redactor's registry, filled to its bound, in a process of its own: the registry is
//! process-wide, so filling it in a shared test binary would withhold every other test's texts.

use kvfetch::base::redact;

/// Past 16,384 values, servers' texts are withheld from messages rather than shown with a value
/// the registry could no longer hold (tests written from missed mutants of `saturated` and
/// `saturate_unless`).
#[test]
fn a_full_registry_withholds_what_servers_say() {
    let server_text = "The secret was not found: a value-000000 was asked for";
    assert!(!redact::saturated());
    assert_eq!(redact::cut_quiet(server_text, 300), server_text);
    for i in 0..16_384 {
        redact::value(&format!("a value-{i:06}"));
    }
    assert!(!redact::saturated(), "16,384 values fit");
    assert_eq!(
        redact::cut_quiet("nothing registered here", 300),
        "nothing registered here"
    );
    redact::value("one value too many");
    assert!(redact::saturated());
    let shown = redact::cut_quiet(server_text, 300);
    assert!(!shown.contains("value-0"), "{shown}");
    assert_eq!(
        redact::redact_prefix("nothing registered here", 300),
        shown,
        "every server text is withheld alike"
    );
}
