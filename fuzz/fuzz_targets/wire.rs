//! Raw bytes on a real hyper HTTP/1 connection over `wire::HeadWatch`:
//! every request hyper serves without a note is the head the watch saw at
//! the same index, with the same method and target. The first byte says
//! how many of the next bytes are read sizes; the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 8).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let sizes: Vec<usize> = sizes.iter().map(|&s| usize::from(s)).collect();
    tokengate_fuzz::check(stream, &sizes);
});
