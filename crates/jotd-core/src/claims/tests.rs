use super::*;
use crate::json::MAX_DEPTH;

const NONE: ClaimsWanted<'static> = ClaimsWanted {
    returned: &[],
    required: &[],
};

fn parse(json: &str) -> Result<Claims<'_>, Reason> {
    parse_with(json, NONE)
}

fn parse_with<'a>(json: &'a str, wanted: ClaimsWanted<'_>) -> Result<Claims<'a>, Reason> {
    let mut claims = Claims::default();
    parse_claims(json, wanted, &mut claims).map(|()| claims)
}

#[test]
fn registered_claims_are_typed_and_borrowed() {
    let c = parse(r#"{"exp":10,"nbf":5.9,"iat":4,"iss":"i","sub":"s","jti":"j","aud":["a","b"],"x":{"y":[1]}}"#)
        .unwrap();
    assert_eq!(
        (c.exp, c.nbf, c.iat),
        (Some(10), Some(6), Some(4)),
        "nbf rounds up"
    );
    let f = parse(r#"{"exp":10.5,"nbf":5,"iat":4.25}"#).unwrap();
    assert_eq!((f.exp, f.nbf, f.iat), (Some(10), Some(5), Some(5)));
    assert!(f.exp_fraction && f.iat_fraction && !c.exp_fraction);
    assert!(matches!(c.sub, Some(Cow::Borrowed("s"))));
    assert_eq!(c.aud.unwrap().as_slice(), ["a", "b"]);
    let one = parse(r#"{"aud":"only"}"#).unwrap();
    assert_eq!(one.aud.unwrap().as_slice(), ["only"]);
    let escaped = parse(r#"{"sub":"a\"b"}"#).unwrap();
    assert_eq!(escaped.sub.as_deref(), Some("a\"b"));
}

#[test]
fn wrong_types_are_invalid_claim_and_duplicates_malformed() {
    let cases = [
        (r#"{"exp":"1700000000"}"#, Reason::InvalidClaim),
        (r#"{"exp":-1}"#, Reason::InvalidClaim),
        (r#"{"exp":null}"#, Reason::InvalidClaim),
        (r#"{"nbf":true}"#, Reason::InvalidClaim),
        (r#"{"aud":5}"#, Reason::InvalidClaim),
        (r#"{"aud":["a",5]}"#, Reason::InvalidClaim),
        (r#"{"sub":["s"]}"#, Reason::InvalidClaim),
        (r#"{"methods":"eth_call"}"#, Reason::InvalidClaim),
        (r#"{"permissions":[1]}"#, Reason::InvalidClaim),
        (r#"{"exp":1,"exp":2}"#, Reason::Malformed),
        (r#"{"sub":"a","sub":"a"}"#, Reason::Malformed),
        (r#"{"methods":[],"methods":[]}"#, Reason::Malformed),
        (r#"{"exp":12x}"#, Reason::Malformed),
        (r#"["exp",1]"#, Reason::Malformed),
        (r#""claims""#, Reason::Malformed),
        (r#"{"exp":1} {}"#, Reason::Malformed),
        (r#"{"exp":1"#, Reason::Malformed),
    ];
    for (json, want) in cases {
        assert_eq!(parse(json).unwrap_err(), want, "{json}");
    }
}

#[test]
fn deep_nesting_is_rejected_without_overflowing_the_stack() {
    let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(5000), "]".repeat(5000));
    assert_eq!(parse(&deep).unwrap_err(), Reason::Malformed);
    let deep_known = format!(r#"{{"aud":{}{}}}"#, "[".repeat(5000), "]".repeat(5000));
    assert_eq!(parse(&deep_known).unwrap_err(), Reason::InvalidClaim);
    let at_limit = format!(
        r#"{{"x":{}{}}}"#,
        "[".repeat(MAX_DEPTH),
        "]".repeat(MAX_DEPTH)
    );
    assert!(parse(&at_limit).is_ok());
    let past_limit = format!(
        r#"{{"x":{}{}}}"#,
        "[{\"a\":".repeat(MAX_DEPTH),
        "1}]".repeat(MAX_DEPTH)
    );
    assert_eq!(parse(&past_limit).unwrap_err(), Reason::Malformed);
    let returned: [Box<str>; 1] = ["x".into()];
    let wanted = ClaimsWanted {
        returned: &returned,
        required: &[],
    };
    assert_eq!(parse_with(&deep, wanted).unwrap_err(), Reason::Malformed);
}

#[test]
fn returned_and_required_claims_are_tracked() {
    let returned: [Box<str>; 2] = ["groups".into(), "sub".into()];
    let required: [Box<str>; 2] = ["name".into(), "missing".into()];
    let wanted = ClaimsWanted {
        returned: &returned,
        required: &required,
    };
    let c = parse_with(r#"{"groups":["a"],"name":"n","sub":"s","other":1}"#, wanted).unwrap();
    let got: Vec<_> = c.returned.iter().map(|(i, raw)| (*i, raw.get())).collect();
    assert_eq!(got, [(0, r#"["a"]"#), (1, r#""s""#)]);
    assert_eq!(c.sub.as_deref(), Some("s"));
    assert_eq!(c.required_seen, 0b01);
    let dup = parse_with(r#"{"groups":1,"groups":2}"#, wanted).unwrap_err();
    assert_eq!(dup, Reason::Malformed);
}
