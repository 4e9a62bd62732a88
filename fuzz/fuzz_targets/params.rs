//! Query and form parameters as the gateway reads them (`Params::scan`,
//! query then form, as `proxy::gather` does) and the rewrite that takes
//! APPTOKEN out (`strip_apptoken`, for both): no panic; once stripped, no
//! parameter of either is an APPTOKEN in any spelling the gateway
//! accepts, every other piece is kept byte for byte, and ACTION, JSON and
//! `_method` read the same. The token's value may still be in the output
//! only where a piece that is not an APPTOKEN held it already.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::decide::params::{strip_apptoken, ParamValue, Params};
use tokengate::percent::Spelled;

fn check(input: &[u8], secret: Option<&[u8]>) {
    let mut out = Vec::new();
    let removed = strip_apptoken(input, &mut out);
    let mut again = Params::default();
    again.scan(&out).expect("what remains scans as before");
    assert_eq!(again.apptoken, ParamValue::Absent, "{:?}", String::from_utf8_lossy(&out));
    let mut before = Params::default();
    before.scan(input).unwrap();
    assert_eq!(
        (&again.action, again.json, again.method_override),
        (&before.action, before.json, before.method_override)
    );
    assert_eq!(removed, before.apptoken != ParamValue::Absent);
    // Every piece of the output is a piece of the input, in order.
    let kept: Vec<&[u8]> = input.split(|&b| b == b'&').filter(|p| out.split(|&b| b == b'&').any(|o| o == *p)).collect();
    if !out.is_empty() {
        for piece in out.split(|&b| b == b'&') {
            assert!(kept.contains(&piece));
        }
    }
    let Some(secret) = secret else { return };
    let Some(spelled) = Spelled::new(secret) else { return };
    // Pieces joined anew by `&` could spell a secret that holds one.
    if spelled.is_in(&out) && !secret.contains(&b'&') {
        assert!(
            out.split(|&b| b == b'&').any(|p| spelled.is_in(p)),
            "the stripped {:?} spells the token",
            String::from_utf8_lossy(&out)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // A query and a form, cut at the first NUL.
    let (query, form) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let mut params = Params::default();
    if params.scan(query).is_err() || form.is_some_and(|f| params.scan(f).is_err()) {
        return;
    }
    let secret = match &params.apptoken {
        ParamValue::One(v) => Some(v.to_vec()),
        _ => None,
    };
    check(query, secret.as_deref());
    if let Some(form) = form {
        check(form, secret.as_deref());
    }
});
