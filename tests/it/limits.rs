//! Per-token limits (interface.md §4 `rate`, `burst`, `concurrency`, §5's
//! last row) through the real gateway: 429 at once with the XMLAPI shape and
//! `Retry-After`, nothing upstream, only granted requests spend, state kept
//! across reloads; and `[limits.shared]` with a real `redis-server` shared
//! by two gateways, Redis stopped for each `on_error`.

use std::time::{Duration, Instant};

use crate::harness::redis::Redis;
use crate::harness::*;

/// A token file: right `limited` (with `limits` lines), token `limited`
/// (`LIMITED`, with its own `own` lines), and the usual `reader`.
fn tokens(limits: &str, own: &str) -> String {
    format!(
        "[access_rights.limited]\nactions = [\"TARGETDATA\"]\nroutes = []\n{limits}\n\n\
         [access_rights.read-only]\nactions = [\"TARGETDATA\"]\nroutes = []\n\n\
         [[token]]\nname = \"limited\"\nactive = true\ntoken_sha256 = \"{}\"\nip_restriction = []\n\
         access_right = \"limited\"\n{own}\nexpires = \"never\"\n\n\
         [[token]]\nname = \"reader\"\nactive = true\ntoken_sha256 = \"{}\"\nip_restriction = []\n\
         access_right = \"read-only\"\nexpires = \"never\"\n",
        sha256_hex(LIMITED),
        sha256_hex(RO)
    )
}

const LIMITED: &str = "7777777777777777777777777777777777777777777777777777777777777777";

fn get(gw: &Gateway, token: &str) -> Response {
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={token}&ACTION=TARGETDATA"))
}

fn metric(gw: &Gateway, start: &str) -> u64 {
    let m = request(gw.admin, "GET", "/metrics", &[], b"").text();
    m.lines().find(|l| l.starts_with(start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

#[test]
fn over_its_rate_a_token_gets_429_at_once_with_retry_after_and_nothing_goes_upstream() {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &tokens("rate = \"3/m\"\nburst = 3", ""));
    for i in 0..3 {
        assert_eq!(get(&gw, LIMITED).status, 200, "request {i} of the burst");
    }
    let r = get(&gw, LIMITED);
    assert_eq!((r.status, r.errorcode().as_deref()), (429, Some("RATE_LIMITED")), "{}", r.text());
    // 3/m: one more fits 20 s after the bucket ran dry.
    let after: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((19..=20).contains(&after), "Retry-After {after}");
    let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={LIMITED}&ACTION=TARGETDATA&JSON=1"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((r.status, v["data"]["errorCode"].as_str()), (429, Some("RATE_LIMITED")));
    assert_eq!(up.count(), 3, "a limited request reached the upstream");
    // Another token is not held back.
    assert_eq!(get(&gw, RO).status, 200);
    let limited = "tokengate_requests_total{decision=\"denied\",reason=\"RATE_LIMITED\",token=\"limited\"}";
    assert_eq!(metric(&gw, limited), 2);
    let tokens = request(gw.admin, "GET", "/tokens", &[], b"").text();
    assert!(tokens.contains("\"RATE_LIMITED\":2"), "{tokens}");
    let limits = |name: &str| {
        let v: serde_json::Value = serde_json::from_str(&tokens).unwrap();
        let all = v["tokens"].as_array().cloned().unwrap_or_default();
        all.into_iter().find(|t| t["name"] == name).map(|t| t["limits"].clone())
    };
    let want = serde_json::json!({"rate": "3/m", "burst": 3, "concurrency": null, "in_flight": 0});
    assert_eq!(limits("limited"), Some(want), "{tokens}");
    assert_eq!(limits("reader"), Some(serde_json::Value::Null), "{tokens}");
}

#[test]
fn refused_requests_spend_nothing_and_an_unknown_token_cannot_spend_anyones() {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &tokens("rate = \"2/m\"", ""));
    for _ in 0..10 {
        // Refused by an earlier row: ACTION not allowed, then unknown tokens.
        let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={LIMITED}&ACTION=REMOVETARGETDATA"));
        assert_eq!(r.status, 403);
        assert_eq!(get(&gw, UNKNOWN).status, 401);
    }
    assert_eq!(get(&gw, LIMITED).status, 200);
    assert_eq!(get(&gw, LIMITED).status, 200);
    assert_eq!(get(&gw, LIMITED).status, 429);
}

#[test]
fn over_its_concurrency_a_token_gets_429_too_many_in_flight_until_an_answer_is_over() {
    let up = MockUpstream::start_with(Reply::Delay(Duration::from_millis(1500)));
    let gw = Gateway::start(&up.url(), &tokens("concurrency = 2", ""));
    let addr = gw.addr;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                request(addr, "GET", &format!("/opi/XMLAPI?APPTOKEN={LIMITED}&ACTION=TARGETDATA"), &[], b"").status
            })
        })
        .collect();
    // Once both are in flight (the upstream has them), a third is refused
    // at once.
    poll(Duration::from_secs(5), || (up.count() == 2).then_some(())).expect("the two slow requests never arrived");
    let refused = poll(Duration::from_secs(5), || {
        let started = Instant::now();
        let r = get(&gw, LIMITED);
        (r.status == 429).then_some((r, started.elapsed()))
    });
    let (r, took) = refused.expect("the third request was never refused");
    let tokens = request(gw.admin, "GET", "/tokens", &[], b"").text();
    assert!(tokens.contains("\"concurrency\":2,\"in_flight\":2"), "{tokens}");
    assert_eq!(r.errorcode().as_deref(), Some("TOO_MANY_IN_FLIGHT"));
    assert!(took < Duration::from_millis(1000), "refused after {took:?}: it waited");
    assert_eq!(r.header("retry-after"), None);
    for t in slow {
        assert_eq!(t.join().unwrap(), 200);
    }
    // Both answers are over: room again.
    up.set_reply(Reply::Ok);
    assert_eq!(get(&gw, LIMITED).status, 200);
}

#[test]
fn a_reload_does_not_refill_a_bucket_and_a_changed_rate_applies_from_the_next_request() {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &tokens("rate = \"2/m\"", ""));
    assert_eq!(get(&gw, LIMITED).status, 200);
    assert_eq!(get(&gw, LIMITED).status, 200);
    assert_eq!(get(&gw, LIMITED).status, 429);
    let reloads = metric(&gw, "tokengate_reloads_total{outcome=\"success\"}");
    let path = gw.path("tokens.toml");
    let rename = |text: String| {
        let tmp = gw.path("tokens.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    // The same limits, the file rewritten (a comment added): still dry.
    rename(tokens("rate = \"2/m\"\n# edited", ""));
    poll(Duration::from_secs(5), || {
        (metric(&gw, "tokengate_reloads_total{outcome=\"success\"}") > reloads).then_some(())
    })
    .expect("the edit was not reloaded");
    assert_eq!(get(&gw, LIMITED).status, 429, "a reload refilled the bucket");
    // The token's own, higher rate: applies from the next request.
    rename(tokens("rate = \"2/m\"", "rate = \"100/s\""));
    let ok = poll(Duration::from_secs(5), || (get(&gw, LIMITED).status == 200).then_some(()));
    assert!(ok.is_some(), "the token's own rate did not apply");
}

/// A gateway in front of `up` sharing `redis` for the rate.
fn shared(up: &MockUpstream, redis: &Redis, rate: &str, on_error: &str) -> Gateway {
    Gateway::builder(&up.url(), &tokens(rate, ""))
        .extra(&format!("[limits.shared]\nredis = \"{}\"\non_error = \"{on_error}\"\ntimeout = \"50ms\"", redis.url()))
        .start()
}

/// Waits until the gateway's store has connected (a limited request is
/// counted in Redis: its key appears).
fn until_connected(gw: &Gateway, redis: &Redis) {
    let ok = poll(Duration::from_secs(10), || {
        let _ = get(gw, LIMITED);
        (redis.keys() > 0).then_some(())
    });
    assert!(ok.is_some(), "the gateway never counted in Redis");
}

#[test]
fn replicas_sharing_one_redis_together_allow_the_tokens_rate() {
    let redis = Redis::start();
    let up = MockUpstream::start();
    let a = shared(&up, &redis, "rate = \"10/m\"\nburst = 10", "deny");
    let b = shared(&up, &redis, "rate = \"10/m\"\nburst = 10", "deny");
    // A token without a rate never touches Redis.
    for _ in 0..5 {
        assert_eq!(get(&a, RO).status, 200);
    }
    assert_eq!(redis.keys(), 0, "a token without a rate was counted in Redis");
    until_connected(&a, &redis);
    until_connected(&b, &redis);
    // Alternating between the two replicas: 10 in all, not 10 each.
    let allowed = (0..30).filter(|i| get(if i % 2 == 0 { &a } else { &b }, LIMITED).status == 200).count();
    // `until_connected` spent up to a few of the ten.
    assert!(allowed <= 10, "the replicas allowed {allowed} requests of a 10/m rate together");
    assert_eq!(get(&a, LIMITED).status, 429);
    assert_eq!(get(&b, LIMITED).status, 429);
    assert!(metric(&a, "tokengate_rate_limit_store_seconds_count") > 0);
}

#[test]
fn with_redis_gone_each_on_error_does_what_it_says_and_no_request_waits_for_it() {
    for on_error in ["local", "deny", "allow"] {
        let mut redis = Redis::start();
        let up = MockUpstream::start();
        let gw = shared(&up, &redis, "rate = \"3/m\"\nburst = 3", on_error);
        until_connected(&gw, &redis);
        redis.stop();
        let started = Instant::now();
        let statuses: Vec<u16> = (0..6).map(|_| get(&gw, LIMITED).status).collect();
        let took = started.elapsed();
        match on_error {
            // The replica's own bucket of 3 (one spent before Redis went).
            "local" => assert!(statuses.iter().filter(|&&s| s == 200).count() <= 3 && statuses.contains(&429)),
            "deny" => assert!(statuses.iter().all(|&s| s == 429), "{statuses:?}"),
            _ => assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}"),
        }
        // Six requests against a dead store: each waited at most its
        // deadline (a generous bound, not a timing assertion of the call).
        assert!(took < Duration::from_secs(5), "{on_error}: six requests took {took:?}");
        assert!(metric(&gw, "tokengate_rate_limit_store_errors_total") >= 6, "{on_error}: errors not counted");
        // Redis back: counted there again (the connection manager reconnects).
        redis.restart();
        let back = poll(Duration::from_secs(15), || {
            let _ = get(&gw, LIMITED);
            (redis.keys() > 0).then_some(())
        });
        assert!(back.is_some(), "{on_error}: the gateway did not reconnect to Redis");
    }
}

#[test]
fn a_redis_that_never_answers_holds_no_request_past_the_deadline() {
    // A listener that accepts and never answers: the store's calls time out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/0", silent.local_addr().unwrap());
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().take(8) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(20));
        drop(held);
    });
    let up = MockUpstream::start();
    let gw = Gateway::builder(&up.url(), &tokens("rate = \"100/s\"", ""))
        .extra(&format!("[limits.shared]\nredis = \"{url}\"\non_error = \"allow\"\ntimeout = \"50ms\""))
        .start();
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(get(&gw, LIMITED).status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(3), "requests waited for a silent Redis");
    drop(hold);
}

#[test]
fn in_redis_too_a_changed_rate_applies_from_the_next_request_without_a_refill() {
    let redis = Redis::start();
    let up = MockUpstream::start();
    let gw = shared(&up, &redis, "rate = \"2/m\"", "deny");
    until_connected(&gw, &redis);
    let _ = get(&gw, LIMITED);
    assert_eq!(get(&gw, LIMITED).status, 429, "the bucket of 2 is dry");
    let reloads = metric(&gw, "tokengate_reloads_total{outcome=\"success\"}");
    let path = gw.path("tokens.toml");
    let tmp = gw.path("tokens.toml.new");
    std::fs::write(&tmp, tokens("rate = \"2/m\"", "rate = \"20/s\"")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    poll(Duration::from_secs(5), || {
        (metric(&gw, "tokengate_reloads_total{outcome=\"success\"}") > reloads).then_some(())
    })
    .expect("the edit was not reloaded");
    // Still dry at once (no refill of 20), but one more fits within the new
    // rate's interval, not after the old minute.
    let started = Instant::now();
    let ok = poll(Duration::from_secs(5), || (get(&gw, LIMITED).status == 200).then_some(()));
    assert!(ok.is_some() && started.elapsed() < Duration::from_secs(3), "the new rate did not apply");
    let burst = (0..40).filter(|_| get(&gw, LIMITED).status == 200).count();
    assert!(burst <= 21, "{burst} at once: the reload refilled the bucket");
}
