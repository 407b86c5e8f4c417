//! The wire codec on arbitrary bytes: framing and every body decoder never
//! panic, and a batch that decodes re-encodes to a frame that decodes the same.
#![no_main]

use jotd_transport::{Limits, decode_batch, decode_decisions, decode_error, encode_batch, next_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_frame_bytes: 1 << 16, max_items: 256 };
    if let Ok(Some(frame)) = next_frame(data, &limits) {
        assert!(frame.consumed <= data.len());
    }
    let _ = decode_decisions(data);
    let _ = decode_error(data);
    if let Ok(batch) = decode_batch(data, &limits) {
        let mut out = Vec::new();
        encode_batch(&batch, &mut out).unwrap();
        let frame = next_frame(&out, &Limits::default()).unwrap().unwrap();
        assert_eq!(decode_batch(frame.body, &limits).unwrap(), batch);
    }
});
