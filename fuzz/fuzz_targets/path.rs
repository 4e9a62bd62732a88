//! Path normalisation as Tomcat maps a path (`CanonicalPath::parse`): no
//! panic; a canonical path has no empty, `.` or `..` segment and starts
//! with `/`; it is a fixed point (parsed again, as itself or as the
//! percent-encoded form sent upstream, it is the same path); a path kept
//! unchanged is the raw path byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::decide::route::CanonicalPath;

fuzz_target!(|raw: &str| {
    let Ok(c) = CanonicalPath::parse(raw) else { return };
    let p = c.as_str();
    assert!(p.starts_with('/'), "{raw:?} -> {p:?}");
    assert!(!p.contains("//"), "{raw:?} -> {p:?}");
    assert!(!p.split('/').any(|s| s == "." || s == ".."), "{raw:?} -> {p:?}");
    if c.is_unchanged() {
        assert_eq!(p, raw);
    }
    let itself = CanonicalPath::parse(p).unwrap_or_else(|e| panic!("{raw:?} -> {p:?} refused: {e:?}"));
    assert_eq!(itself.as_str(), p, "{raw:?}");
    let mut up = String::new();
    c.to_upstream(&mut up);
    let again = CanonicalPath::parse(&up).unwrap_or_else(|e| panic!("{raw:?} -> {up:?} refused: {e:?}"));
    assert_eq!(again.as_str(), p, "{raw:?} upstream {up:?}");
    assert!(again.is_unchanged() || up.contains('%'), "{raw:?} upstream {up:?}");
    assert_eq!(again.is_xmlapi(), c.is_xmlapi());
});
