//! The wire codec: exact bytes (as docs/protocol.md shows them), round trips,
//! partial frames, and limits that hold before anything is allocated.

use jotd_transport::{
    BatchRequest, DecisionChunk, ErrorCode, ErrorFrame, FrameType, Item, Limits,
    MAX_ADDRESSES_PER_BATCH, WireDecision, WireError, decode_batch, decode_decisions, decode_error,
    encode_batch, encode_decisions, encode_error, next_frame, peek_request_id,
};
use proptest::prelude::*;

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn sample() -> BatchRequest<'static> {
    BatchRequest {
        request_id: 7,
        items: vec![Item {
            token: Some(b"a.b.c"),
            tenant: "t",
            method: Some("eth_call"),
            addresses: vec!["0xab"],
            origin: None,
            user_agent: None,
        }],
    }
}

/// The example of docs/protocol.md, byte for byte.
#[test]
fn golden_bytes_match_the_protocol_doc() {
    let mut out = Vec::new();
    encode_batch(&sample(), &mut out).unwrap();
    assert_eq!(
        hex(&out),
        "00 00 00 1e 01 07 01 01 05 61 2e 62 2e 63 01 74 01 08 65 74 68 5f 63 61 6c 6c 01 04 30 78 61 62 00 00"
    );
    let chunk = DecisionChunk {
        request_id: 7,
        decisions: vec![WireDecision {
            index: 0,
            allow: true,
            reason: 0,
            kid: Some("k"),
            sub: None,
            exp: Some(300),
            claims: vec![],
        }],
    };
    out.clear();
    encode_decisions(&chunk, &mut out).unwrap();
    assert_eq!(
        hex(&out),
        "00 00 00 0f 02 07 01 00 01 00 01 01 6b 00 01 fb 2c 01 00"
    );
    out.clear();
    encode_error(
        &ErrorFrame {
            request_id: 7,
            code: ErrorCode::TooManyItems as u16,
            message: "max 4096",
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(hex(&out), "00 00 00 0c 03 07 03 08 6d 61 78 20 34 30 39 36");
}

/// docs/protocol.md: decoders accept a varint in a longer form than needed
/// (encoders always write the shortest), and the request id of a frame's first
/// bytes is readable before the rest arrives.
#[test]
fn non_shortest_varints_are_accepted_and_the_id_is_read_from_the_head() {
    // The doc's batch with request_id 7 written as 0xfb 07 00 (u16 form).
    let mut long = Vec::new();
    encode_batch(&sample(), &mut long).unwrap();
    long.splice(5..6, [0xfb, 0x07, 0x00]);
    let len = u32::try_from(long.len() - 4).unwrap();
    long[..4].copy_from_slice(&len.to_be_bytes());
    let frame = next_frame(&long, &Limits::default()).unwrap().unwrap();
    assert_eq!(
        decode_batch(frame.body, &Limits::default()).unwrap(),
        sample()
    );
    assert_eq!(peek_request_id(&long[..8]), Some(7));
    assert_eq!(peek_request_id(&long[..6]), None, "id not whole yet");
    assert_eq!(peek_request_id(&[0, 0, 0, 9, 2, 7]), None, "not a Batch");
    // The id must lie inside the declared frame: a frame of length 0 (or 1,
    // the type byte alone) followed by more bytes has no id to echo.
    assert_eq!(peek_request_id(&[0, 0, 0, 0, 1, 7]), None, "length 0");
    assert_eq!(peek_request_id(&[0, 0, 0, 1, 1, 7]), None, "type byte only");
    assert_eq!(peek_request_id(&[0, 0, 0, 2, 1, 7]), Some(7), "id inside");
    assert_eq!(
        peek_request_id(&[0, 0, 0, 3, 1, 0xfb, 7, 0]),
        None,
        "a 3-byte id cut by the declared length"
    );
}

#[test]
fn frames_round_trip_and_split_from_a_stream() {
    let mut stream = Vec::new();
    encode_batch(&sample(), &mut stream).unwrap();
    let chunk = DecisionChunk {
        request_id: u64::MAX,
        decisions: vec![WireDecision {
            index: 4095,
            allow: false,
            reason: 18,
            kid: None,
            sub: Some("alice"),
            exp: None,
            claims: vec![("groups", r#"["ops"]"#)],
        }],
    };
    encode_decisions(&chunk, &mut stream).unwrap();
    encode_error(
        &ErrorFrame {
            request_id: 1,
            code: 4,
            message: "overloaded",
        },
        &mut stream,
    )
    .unwrap();
    let limits = Limits::default();
    // Every strict prefix is "need more"; the whole stream yields three frames.
    let first = next_frame(&stream, &limits).unwrap().unwrap();
    for cut in 0..first.consumed {
        assert_eq!(
            next_frame(&stream[..cut], &limits).unwrap(),
            None,
            "prefix {cut}"
        );
    }
    assert_eq!(first.kind, FrameType::Batch);
    assert_eq!(decode_batch(first.body, &limits).unwrap(), sample());
    let rest = &stream[first.consumed..];
    let second = next_frame(rest, &limits).unwrap().unwrap();
    assert_eq!(
        (second.kind, decode_decisions(second.body).unwrap()),
        (FrameType::Decisions, chunk)
    );
    let third = next_frame(&rest[second.consumed..], &limits)
        .unwrap()
        .unwrap();
    let err = decode_error(third.body).unwrap();
    assert_eq!((err.code, err.message), (4, "overloaded"));
    assert_eq!(ErrorCode::from_code(err.code), Some(ErrorCode::Overloaded));
    assert_eq!(
        second.consumed + first.consumed + third.consumed,
        stream.len()
    );
}

#[test]
fn limits_hold_before_allocation() {
    let limits = Limits {
        max_frame_bytes: 1024,
        max_items: 100,
    };
    // A length prefix over the limit is refused from the prefix alone.
    assert_eq!(
        next_frame(&[0, 0, 4, 1], &limits),
        Err(WireError::FrameTooLarge {
            len: 1025,
            limit: 1024
        })
    );
    assert_eq!(
        next_frame(&[0xff, 0xff, 0xff, 0xff], &Limits::default()).unwrap_err(),
        WireError::FrameTooLarge {
            len: u32::MAX as usize,
            limit: 4 << 20
        }
    );
    assert_eq!(
        next_frame(&[0, 0, 0, 0], &limits),
        Err(WireError::EmptyFrame)
    );
    assert_eq!(
        next_frame(&[0, 0, 0, 1, 9], &limits),
        Err(WireError::UnknownFrameType(9))
    );
    // Item counts are checked before items are decoded: 101, then 2^40 claimed.
    assert_eq!(
        decode_batch(&[7, 101], &limits),
        Err(WireError::TooManyItems {
            count: 101,
            limit: 100
        })
    );
    let mut huge = vec![7, 0xfd];
    huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert_eq!(
        decode_batch(&huge, &limits),
        Err(WireError::TooManyItems {
            count: 1 << 40,
            limit: 100
        })
    );
    // A token claiming 2^60 bytes in a tiny body: refused by bincode's limit, nothing allocated.
    let mut long_token = vec![7, 1, 1, 0xfd];
    long_token.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(
        decode_batch(&long_token, &limits),
        Err(WireError::Malformed(_))
    ));
    // Addresses are counted across the batch before any list is allocated: a
    // frame of empty addresses (one wire byte each, ~40 bytes once decoded
    // and indexed) held about 30 times its size.
    let big = Limits {
        max_frame_bytes: 16 << 20,
        max_items: 100,
    };
    let item = |n: usize| Item {
        token: None,
        tenant: "t",
        method: None,
        addresses: vec![""; n],
        origin: None,
        user_agent: None,
    };
    let body_of = |items: Vec<Item<'static>>| {
        let mut out = Vec::new();
        encode_batch(
            &BatchRequest {
                request_id: 7,
                items,
            },
            &mut out,
        )
        .unwrap();
        out[5..].to_vec()
    };
    let half = MAX_ADDRESSES_PER_BATCH / 2;
    let at_cap = body_of(vec![item(half), item(MAX_ADDRESSES_PER_BATCH - half)]);
    assert_eq!(decode_batch(&at_cap, &big).unwrap().items.len(), 2);
    let over = body_of(vec![item(half), item(MAX_ADDRESSES_PER_BATCH - half + 1)]);
    assert!(
        matches!(decode_batch(&over, &big), Err(WireError::Malformed(m)) if m.contains("addresses in the batch")),
        "one address past the cap must be refused"
    );
    // A tiny body claiming a million addresses: refused before the list exists.
    let mut claim = vec![7, 1, 0, 1, b't', 0, 0xfc];
    claim.extend_from_slice(&1_000_000u32.to_le_bytes());
    assert!(matches!(
        decode_batch(&claim, &big),
        Err(WireError::Malformed(m)) if m.contains("addresses in the batch")
    ));
    // Truncation, trailing bytes, bad UTF-8.
    let mut out = Vec::new();
    encode_batch(&sample(), &mut out).unwrap();
    let body = &out[5..];
    assert!(matches!(
        decode_batch(&body[..body.len() - 1], &limits),
        Err(WireError::Malformed(_))
    ));
    let mut trailing = body.to_vec();
    trailing.push(0);
    assert_eq!(
        decode_batch(&trailing, &limits),
        Err(WireError::Malformed("1 bytes left over".into()))
    );
    let mut bad_utf8 = body.to_vec();
    bad_utf8[10] = 0xff; // the tenant's one byte
    assert!(matches!(
        decode_batch(&bad_utf8, &limits),
        Err(WireError::Malformed(_))
    ));
}

fn opt_str() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("\\PC{0,20}")
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let limits = Limits::default();
        let _ = next_frame(&bytes, &limits);
        let _ = decode_batch(&bytes, &limits);
        let _ = decode_decisions(&bytes);
        let _ = decode_error(&bytes);
    }

    #[test]
    fn batches_round_trip(id in any::<u64>(), raw in proptest::collection::vec((proptest::option::of(proptest::collection::vec(any::<u8>(), 0..60)), "\\PC{0,12}", opt_str(), proptest::collection::vec("[0-9a-fx]{0,42}", 0..3), opt_str(), opt_str()), 0..8)) {
        let items: Vec<Item<'_>> = raw.iter().map(|(t, tenant, m, a, o, u)| Item {
            token: t.as_deref(),
            tenant,
            method: m.as_deref(),
            addresses: a.iter().map(String::as_str).collect(),
            origin: o.as_deref(),
            user_agent: u.as_deref(),
        }).collect();
        let batch = BatchRequest { request_id: id, items };
        let mut out = Vec::new();
        encode_batch(&batch, &mut out).unwrap();
        let frame = next_frame(&out, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(frame.consumed, out.len());
        prop_assert_eq!(decode_batch(frame.body, &Limits::default()).unwrap(), batch);
    }
}

/// docs/protocol.md's error-code table: every code with its name, and its
/// "send again" column as the client library decides it.
#[test]
fn the_protocol_doc_lists_every_error_code_and_whether_to_send_again() {
    use jotd_transport::{ClientError, ErrorCode};
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md"),
    )
    .unwrap();
    let rows: Vec<Vec<String>> = doc
        .lines()
        .filter(|l| l.starts_with("| ") && l.ends_with(" |"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .filter(|c: &Vec<String>| {
            c.len() == 4 && c[0].parse::<u16>().is_ok() && matches!(c[3].as_str(), "yes" | "no")
        })
        .collect();
    assert_eq!(rows.len(), ErrorCode::ALL.len(), "{rows:?}");
    for code in ErrorCode::ALL {
        let row = rows
            .iter()
            .find(|r| r[0] == (code as u16).to_string())
            .unwrap_or_else(|| panic!("code {} not in the table", code as u16));
        assert_eq!(row[1], code.as_str());
        let again = ClientError::Server {
            endpoint: "127.0.0.1:1".parse().unwrap(),
            code: code as u16,
            message: String::new(),
        }
        .retryable();
        assert_eq!(
            row[3],
            if again { "yes" } else { "no" },
            "{}",
            code.as_str()
        );
    }
}

/// Frames that fit the configured limits decode, at the largest limits a
/// server accepts: bincode's limit counts claims (8 bytes a varint, an item's
/// in-memory size up front), not wire bytes, and a 16 MiB frame of 4,096
/// items or a batch of 65,536 items with 65,536 addresses went over it.
#[test]
fn the_largest_frames_the_limits_allow_decode() {
    let limits = Limits {
        max_frame_bytes: jotd_transport::HARD_MAX_FRAME_BYTES,
        max_items: jotd_transport::HARD_MAX_ITEMS,
    };
    let big = vec![b'a'; 4080];
    let near_limit = BatchRequest {
        request_id: 7,
        items: (0..4096)
            .map(|_| Item {
                token: Some(&big),
                tenant: "t",
                method: Some("m"),
                addresses: vec![],
                origin: None,
                user_agent: None,
            })
            .collect(),
    };
    let many = BatchRequest {
        request_id: 8,
        items: (0..jotd_transport::HARD_MAX_ITEMS)
            .map(|_| Item {
                token: None,
                tenant: "",
                method: None,
                addresses: vec![""],
                origin: None,
                user_agent: None,
            })
            .collect(),
    };
    for batch in [near_limit, many] {
        let mut out = Vec::new();
        encode_batch(&batch, &mut out).unwrap();
        let body = &out[5..];
        assert!(out.len() - 4 <= limits.max_frame_bytes, "{}", out.len());
        let got = decode_batch(body, &limits).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.items.len(), batch.items.len());
    }
}
