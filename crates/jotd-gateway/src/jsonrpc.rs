//! JSON-RPC 2.0 bodies as the gateway reads them: a single call or a batch
//! array; each call's `id`, `method`, and the addresses it touches (from a
//! table of methods → parameter positions).
//!
//! What the gateway checks is what the node will run: each call is forwarded
//! as the exact bytes that were parsed, and a body whose meaning another
//! parser could read differently is refused. Node parsers disagree on keys:
//! Go's `encoding/json` (geth, erigon) matches them case-insensitively with
//! Unicode folding, serde and Jackson match them exactly. So the gateway
//! reads only the exact spelling of each key it looks at, refuses a call
//! that spells one of those keys any other way that folds alike (`METHOD`,
//! `TO`, `addreß`, `ıd`: some node would read it as the key, another would
//! not), and refuses two keys of one object that fold alike, at any depth.
//! The fold is broad on purpose (full case mapping, plus Go's `ſ` → `s` and
//! `K` → `k`, plus `ı` and `İ` → `i`): refusing too much is safe, reading a
//! variant is not. Methods not in the table touch an unknown set of addresses
//! ([`ANY`]) unless they are known to touch none. A value at an address position
//! that is not an address makes the call invalid rather than unrestricted, and
//! a call whose reach no address bounds (`eth_getLogs` without `address`,
//! `eth_call` without `to`, state overrides) carries the address [`ANY`], which
//! only a token that lists `*` allows.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// JSON-RPC error codes the gateway answers with.
pub mod code {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// A parameter at an address position is not an address.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal (upstream unreachable, the jotd pool unavailable).
    pub const INTERNAL: i64 = -32603;
    /// The token is missing or invalid (HTTP 401 alone).
    pub const UNAUTHORIZED: i64 = -32001;
    /// The token is valid but its policy refuses the call (HTTP 403 alone).
    pub const FORBIDDEN: i64 = -32003;
}

/// One parameter position of an address:
///
/// - `N`: the parameter is an address (absent or null: none);
/// - `N.field`: a field of the parameter object holds one address; absent or
///   null, the call is unbounded (`eth_call` without `to` creates a contract);
/// - `N.field[]`: the field holds one address or a list; absent, null or
///   empty, the call is unbounded (`eth_getLogs` without `address`);
/// - `N!`: the parameter, when present and not null, makes the call unbounded
///   (state overrides);
/// - `N.field!`: the field of the parameter object, when present, not null
///   and not an empty list, makes the call unbounded (an EIP-7702
///   `authorizationList`: it gives an account any code for the call);
/// - `*`: the call is always unbounded (`eth_simulateV1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamPath {
    /// `N`.
    Param(usize),
    /// `N.field` or, with `list`, `N.field[]`.
    Field {
        /// The parameter.
        index: usize,
        /// The field (matched case-folded, as the node does).
        field: String,
        /// Whether a list of addresses may stand there.
        list: bool,
    },
    /// `N!`.
    Unbounding(usize),
    /// `N.field!`.
    UnboundingField {
        /// The parameter.
        index: usize,
        /// The field (matched as [`ParamPath::Field`]'s).
        field: String,
    },
    /// `*`.
    Always,
}

impl ParamPath {
    fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}`: a position is `N`, `N.field`, `N.field[]`, `N!`, `N.field!` or `*` (field names in ASCII)"
            )
        };
        if s == "*" {
            return Ok(Self::Always);
        }
        if let Some(n) = s.strip_suffix('!') {
            return match n.split_once('.') {
                None => n.parse().map(Self::Unbounding).map_err(|_| bad()),
                Some((i, f))
                    if !f.is_empty() && !f.contains('.') && f.is_ascii() && !f.ends_with("[]") =>
                {
                    Ok(Self::UnboundingField {
                        index: i.parse().map_err(|_| bad())?,
                        field: f.to_owned(),
                    })
                }
                Some(_) => Err(bad()),
            };
        }
        let (path, list) = match s.strip_suffix("[]") {
            Some(p) => (p, true),
            None => (s, false),
        };
        match path.split_once('.') {
            None if !list => path.parse().map(Self::Param).map_err(|_| bad()),
            None => Err(bad()),
            // ASCII field names only: keys are then compared without folding
            // Unicode (see `member`).
            Some((i, f)) if !f.is_empty() && !f.contains('.') && f.is_ascii() => Ok(Self::Field {
                index: i.parse().map_err(|_| bad())?,
                field: f.to_owned(),
                list,
            }),
            Some(_) => Err(bad()),
        }
    }

    fn render(&self) -> String {
        match self {
            Self::Param(i) => i.to_string(),
            Self::Field { index, field, list } => {
                format!("{index}.{field}{}", if *list { "[]" } else { "" })
            }
            Self::Unbounding(i) => format!("{i}!"),
            Self::UnboundingField { index, field } => format!("{index}.{field}!"),
            Self::Always => "*".into(),
        }
    }
}

/// The address a call carries when nothing bounds what it touches. Only a
/// token whose allowlist lists `*` allows it; a token without an address
/// allowlist is not restricted by it.
pub const ANY: &str = "*";

/// Most addresses one call may name (a longer list is invalid params): keeps
/// one check, and so one batch, small.
pub const MAX_ADDRESSES: usize = 64;

/// A key folded broadly: every spelling some JSON parser may read as the
/// same key folds to the same string (full case mapping, so `ß` is `ss`;
/// Go's `ſ` → `s` and Kelvin `K` → `k`; `ı` and `İ` → `i`).
fn fold(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            '\u{131}' | '\u{130}' => 'i',
            c => c,
        })
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// The value of the key spelled exactly `name` in an object's members, or
/// an error when the object spells it another way that folds alike (some
/// node would read that as `name`, another would not). Keys that fold alike
/// were refused as duplicates, so at most one matches.
fn member<'v, V>(
    members: impl IntoIterator<Item = (&'v String, &'v V)>,
    name: &str,
) -> Result<Option<&'v V>, String> {
    let folded = std::cell::OnceCell::new();
    for (k, v) in members {
        if k == name {
            return Ok(Some(v));
        }
        // The names read are ASCII: an ASCII key folds alike exactly when it
        // matches ignoring ASCII case (no allocation on this, the usual, path).
        let alike = if k.is_ascii() {
            k.eq_ignore_ascii_case(name)
        } else {
            fold(k) == *folded.get_or_init(|| fold(name))
        };
        if alike {
            return Err(format!(
                "key `{k}` is not spelled `{name}`: nodes differ on whether they read it as `{name}`"
            ));
        }
    }
    Ok(None)
}

/// Method → the parameter positions holding addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressTable {
    rows: BTreeMap<String, Vec<ParamPath>>,
}

/// The built-in rows (docs/gateways.md lists them): the targets a call
/// touches, and for the methods that make the node sign, the signing account
/// (`eth_sign`'s `0`, a transaction's `from`): on a node holding unlocked keys
/// that account is what the call spends. A call object's EIP-7702
/// `authorizationList` (Prague: geth applies it in `eth_call` and
/// `eth_estimateGas`) delegates an account to any code for the call, so an
/// allowed `to` would run whatever the caller signed: it makes the call
/// unbounded. `eth_subscribe` is handled apart
/// (its second parameter depends on the first) unless an operator's row
/// names it.
const ETHEREUM: &[(&str, &[&str])] = &[
    ("eth_getBalance", &["0"]),
    ("eth_getCode", &["0"]),
    ("eth_getStorageAt", &["0"]),
    ("eth_getTransactionCount", &["0"]),
    ("eth_getProof", &["0"]),
    ("eth_call", &["0.to", "2!", "0.authorizationList!"]),
    ("eth_estimateGas", &["0.to", "2!", "0.authorizationList!"]),
    (
        "eth_createAccessList",
        &["0.to", "2!", "0.authorizationList!"],
    ),
    (
        "eth_sendTransaction",
        &["0.to", "0.from", "0.authorizationList!"],
    ),
    (
        "eth_signTransaction",
        &["0.to", "0.from", "0.authorizationList!"],
    ),
    (
        "personal_sendTransaction",
        &["0.to", "0.from", "0.authorizationList!"],
    ),
    (
        "personal_signTransaction",
        &["0.to", "0.from", "0.authorizationList!"],
    ),
    ("debug_traceCall", &["0.to", "2!", "0.authorizationList!"]),
    ("trace_call", &["0.to", "3!", "0.authorizationList!"]),
    ("eth_simulateV1", &["*"]),
    ("eth_getLogs", &["0.address[]"]),
    ("eth_newFilter", &["0.address[]"]),
    ("eth_sign", &["0"]),
    ("personal_sign", &["1"]),
    ("eth_signTypedData", &["0"]),
    ("eth_signTypedData_v3", &["0"]),
    ("eth_signTypedData_v4", &["0"]),
    ("eth_getAccount", &["0"]),
    // A tracer config (index 1) can run a JavaScript tracer that reads any
    // account's state, or carry state overrides: with one, the call is unbounded.
    ("debug_traceTransaction", &["1!"]),
    ("debug_traceBlockByHash", &["1!"]),
    ("debug_traceBlockByNumber", &["1!"]),
    ("debug_storageRangeAt", &["2"]),
    // Known to touch no address (chain data by block or hash, the node's own
    // state, raw transactions whose target is inside the signed RLP). Any method
    // not in this table carries `*`: so do eth_getFilterChanges,
    // eth_getFilterLogs and eth_uninstallFilter, since some nodes (Nethermind)
    // number filters 1, 2, 3... and a filter id would reach another tenant's
    // filter; on a node with random ids an operator may list them with no
    // positions in `[address_params]`.
    ("web3_clientVersion", &[]),
    ("web3_sha3", &[]),
    ("net_version", &[]),
    ("net_listening", &[]),
    ("net_peerCount", &[]),
    ("eth_protocolVersion", &[]),
    ("eth_syncing", &[]),
    ("eth_chainId", &[]),
    ("eth_blockNumber", &[]),
    ("eth_gasPrice", &[]),
    ("eth_maxPriorityFeePerGas", &[]),
    ("eth_feeHistory", &[]),
    ("eth_blobBaseFee", &[]),
    ("eth_mining", &[]),
    ("eth_hashrate", &[]),
    ("eth_coinbase", &[]),
    ("eth_accounts", &[]),
    ("eth_getBlockByHash", &[]),
    ("eth_getBlockByNumber", &[]),
    ("eth_getBlockReceipts", &[]),
    ("eth_getBlockTransactionCountByHash", &[]),
    ("eth_getBlockTransactionCountByNumber", &[]),
    ("eth_getUncleByBlockHashAndIndex", &[]),
    ("eth_getUncleByBlockNumberAndIndex", &[]),
    ("eth_getUncleCountByBlockHash", &[]),
    ("eth_getUncleCountByBlockNumber", &[]),
    ("eth_getTransactionByHash", &[]),
    ("eth_getTransactionByBlockHashAndIndex", &[]),
    ("eth_getTransactionByBlockNumberAndIndex", &[]),
    ("eth_getTransactionReceipt", &[]),
    ("eth_getRawTransactionByHash", &[]),
    ("eth_sendRawTransaction", &[]),
    ("eth_newBlockFilter", &[]),
    ("eth_newPendingTransactionFilter", &[]),
    ("eth_unsubscribe", &[]),
    ("trace_transaction", &[]),
    ("trace_block", &[]),
    ("trace_get", &[]),
    ("trace_replayTransaction", &[]),
    ("trace_replayBlockTransactions", &[]),
    ("txpool_status", &[]),
];

impl AddressTable {
    /// The built-in Ethereum rows.
    #[must_use]
    pub fn ethereum() -> Self {
        let mut t = Self::default();
        for (m, ps) in ETHEREUM {
            let ps: Vec<String> = ps.iter().map(|p| (*p).to_owned()).collect();
            t.set(m, &ps).expect("built-in rows parse");
        }
        t
    }

    /// Sets the row of `method`; no positions: the method touches no
    /// address. A method without a row touches an unknown set ([`ANY`]).
    ///
    /// # Errors
    /// A position is not `N`, `N.field`, `N.field[]`, `N!` or `*`.
    pub fn set(&mut self, method: &str, params: &[String]) -> Result<(), String> {
        let ps = params
            .iter()
            .map(|p| ParamPath::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        self.rows.insert(method.to_owned(), ps);
        Ok(())
    }

    /// The rows, as `method: ["0", "0.to"]`.
    pub fn rows(&self) -> impl Iterator<Item = (&str, Vec<String>)> {
        self.rows
            .iter()
            .map(|(m, ps)| (m.as_str(), ps.iter().map(ParamPath::render).collect()))
    }
}

/// One call, as parsed.
#[derive(Debug, Clone)]
pub struct Call {
    /// The `id` as written (raw JSON); `None` for a notification.
    pub id: Option<Box<RawValue>>,
    /// The method.
    pub method: String,
    /// Addresses it touches, lower-case.
    pub addresses: Vec<String>,
    /// The call's exact bytes (what is forwarded).
    pub raw: Box<RawValue>,
}

/// An element that is not a call: answered with an error, never forwarded.
#[derive(Debug, Clone)]
pub struct Invalid {
    /// The `id`, when one could be read (else `null`).
    pub id: Option<Box<RawValue>>,
    /// [`code::INVALID_REQUEST`] or [`code::INVALID_PARAMS`].
    pub code: i64,
    /// What was wrong.
    pub message: String,
}

/// A parsed body.
#[derive(Debug)]
pub enum Body {
    /// One call (or one invalid object).
    Single(Result<Call, Invalid>),
    /// A batch array, in order.
    Batch(Vec<Result<Call, Invalid>>),
}

/// A body that cannot be answered call by call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// [`code::PARSE_ERROR`] or [`code::INVALID_REQUEST`].
    pub code: i64,
    /// What was wrong.
    pub message: String,
}

/// A batch array's calls, at most `max`: one more sets `over` and stops
/// the parse there.
struct Capped<'a> {
    max: usize,
    over: &'a std::cell::Cell<bool>,
}

impl<'de> de::DeserializeSeed<'de> for Capped<'_> {
    type Value = Vec<Box<RawValue>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Capped<'_> {
    type Value = Vec<Box<RawValue>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a batch array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Box<RawValue>>()? {
            if items.len() == self.max {
                self.over.set(true);
                return Err(de::Error::custom("too many calls"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// Walks a JSON document and fails on a duplicate key in any object.
struct NoDuplicateKeys;

impl<'de> de::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDupVisitor)
    }
}

struct NoDupVisitor;

impl<'de> Visitor<'de> for NoDupVisitor {
    type Value = NoDuplicateKeys;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(fold(&k)) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{k}` (keys are compared case-insensitively, as nodes do)"
                )));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }
}

/// Whether `s` is `0x` and 40 hex digits.
fn is_address(s: &str) -> bool {
    s.len() == 42
        && (s.starts_with("0x") || s.starts_with("0X"))
        && s.as_bytes()[2..].iter().all(u8::is_ascii_hexdigit)
}

fn addresses_of(
    table: &AddressTable,
    method: &str,
    params: Option<&Value>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let one = |v: &Value, at: &str, out: &mut Vec<String>| match v {
        Value::String(s) if is_address(s) => {
            out.push(s.to_ascii_lowercase());
            Ok(())
        }
        _ => Err(format!("{method}: params[{at}] is not an address")),
    };
    let list = match params {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        // Named parameters: the table's positions do not apply; fail closed.
        Some(_) => {
            return Ok(if table.rows.get(method).is_some_and(Vec::is_empty) {
                Vec::new()
            } else {
                vec![ANY.to_owned()]
            });
        }
    };
    let param = |i: usize| list.get(i).filter(|v| !v.is_null());
    // eth_subscribe: "logs" takes a filter like eth_getLogs'; the other standard
    // kinds touch no address; a kind not known here carries `*`.
    let subscribe = [ParamPath::Field {
        index: 1,
        field: "address".into(),
        list: true,
    }];
    // An operator's own `eth_subscribe` row replaces this.
    let paths: &[ParamPath] = if method == "eth_subscribe" && !table.rows.contains_key(method) {
        match param(0).and_then(Value::as_str) {
            Some("logs") => &subscribe,
            Some("newHeads" | "newPendingTransactions" | "syncing") => &[],
            _ => return Ok(vec![ANY.to_owned()]),
        }
    } else {
        match table.rows.get(method) {
            Some(p) => p,
            // Not known to touch no address: what it touches is unknown.
            None => return Ok(vec![ANY.to_owned()]),
        }
    };
    for p in paths {
        match p {
            ParamPath::Always => out.push(ANY.to_owned()),
            ParamPath::Unbounding(i) => {
                if param(*i).is_some() {
                    out.push(ANY.to_owned());
                }
            }
            ParamPath::Param(i) => {
                if let Some(v) = param(*i) {
                    one(v, &i.to_string(), &mut out)?;
                }
            }
            ParamPath::UnboundingField { index, field } => match param(*index) {
                None => {}
                Some(Value::Object(o)) => {
                    match member(o, field).map_err(|e| format!("{method}: params[{index}]: {e}"))? {
                        None | Some(Value::Null) => {}
                        Some(Value::Array(items)) if items.is_empty() => {}
                        Some(_) => out.push(ANY.to_owned()),
                    }
                }
                Some(_) => return Err(format!("{method}: params[{index}] is not an object")),
            },
            ParamPath::Field { index, field, list } => {
                let at = format!("{index}.{field}");
                match param(*index) {
                    None => out.push(ANY.to_owned()),
                    Some(Value::Object(o)) => match member(o, field)
                        .map_err(|e| format!("{method}: params[{index}]: {e}"))?
                    {
                        None | Some(Value::Null) => out.push(ANY.to_owned()),
                        Some(Value::Array(items)) if *list => {
                            if items.is_empty() {
                                out.push(ANY.to_owned());
                            }
                            for v in items {
                                one(v, &at, &mut out)?;
                            }
                        }
                        Some(v) => one(v, &at, &mut out)?,
                    },
                    Some(_) => return Err(format!("{method}: params[{index}] is not an object")),
                }
            }
        }
    }
    if out.len() > MAX_ADDRESSES {
        return Err(format!(
            "{method}: {} addresses (at most {MAX_ADDRESSES} per call)",
            out.len()
        ));
    }
    Ok(out)
}

fn call(table: &AddressTable, raw_call: Box<RawValue>) -> Result<Call, Invalid> {
    let invalid =
        |id: Option<Box<RawValue>>, code: i64, message: String| Invalid { id, code, message };
    // Each member's exact text, so the id is echoed as written.
    let Ok(members) = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(raw_call.get())
    else {
        return Err(invalid(
            None,
            code::INVALID_REQUEST,
            "a call is a JSON object".into(),
        ));
    };
    let id = match member(&members, "id") {
        Err(e) => return Err(invalid(None, code::INVALID_REQUEST, e)),
        Ok(None) => None,
        Ok(Some(v))
            if matches!(
                v.get().as_bytes().first(),
                Some(b'"' | b'n' | b'-' | b'0'..=b'9')
            ) =>
        {
            Some(v.to_owned())
        }
        Ok(Some(_)) => {
            return Err(invalid(
                None,
                code::INVALID_REQUEST,
                "`id` is a string, a number or null".into(),
            ));
        }
    };
    for name in ["jsonrpc", "method", "params"] {
        if let Err(e) = member(&members, name) {
            return Err(invalid(id, code::INVALID_REQUEST, e));
        }
    }
    let get = |name: &str| member(&members, name).ok().flatten();
    let text = |name: &str| get(name).and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    if text("jsonrpc").as_deref() != Some("2.0") {
        return Err(invalid(
            id,
            code::INVALID_REQUEST,
            "`jsonrpc` must be \"2.0\"".into(),
        ));
    }
    let Some(method) = text("method") else {
        return Err(invalid(
            id,
            code::INVALID_REQUEST,
            "`method` is a string".into(),
        ));
    };
    // A `params` that does not parse is invalid, never read as absent (which
    // would carry no address and pass an address allowlist).
    let params: Option<Value> = match get("params").map(|v| serde_json::from_str(v.get())) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            return Err(invalid(id, code::INVALID_PARAMS, format!("`params`: {e}")));
        }
    };
    if let Some(p) = &params
        && !p.is_array()
        && !p.is_object()
    {
        return Err(invalid(
            id,
            code::INVALID_REQUEST,
            "`params` is an array or an object".into(),
        ));
    }
    let addresses = addresses_of(table, &method, params.as_ref())
        .map_err(|m| invalid(id.clone(), code::INVALID_PARAMS, m))?;
    Ok(Call {
        id,
        method,
        addresses,
        raw: raw_call,
    })
}

/// Parses a body. `max_calls` caps a batch array.
///
/// # Errors
/// Not JSON, a duplicate key, an empty or oversized batch, or not an object or array.
pub fn parse(body: &[u8], table: &AddressTable, max_calls: usize) -> Result<Body, BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError {
        code: code::PARSE_ERROR,
        message: "the body is not UTF-8".into(),
    })?;
    serde_json::from_str::<NoDuplicateKeys>(text).map_err(|e| BodyError {
        code: code::PARSE_ERROR,
        message: format!("the body is not JSON-RPC: {e}"),
    })?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        // Counted as they are read: past `max_calls` the rest are never
        // built (a 1 MiB `[0,0,…]` was half a million allocations before
        // the count refused it, ahead of any token check).
        let over = std::cell::Cell::new(false);
        let mut de = serde_json::Deserializer::from_str(text);
        let items = de::DeserializeSeed::deserialize(
            Capped {
                max: max_calls,
                over: &over,
            },
            &mut de,
        )
        .and_then(|items| de.end().map(|()| items));
        if over.get() {
            return Err(BodyError {
                code: code::INVALID_REQUEST,
                message: format!("a batch of more than {max_calls} calls"),
            });
        }
        let items = items.map_err(|e| BodyError {
            code: code::PARSE_ERROR,
            message: format!("the body is not JSON: {e}"),
        })?;
        if items.is_empty() {
            return Err(BodyError {
                code: code::INVALID_REQUEST,
                message: "an empty batch".into(),
            });
        }
        Ok(Body::Batch(
            items.into_iter().map(|c| call(table, c)).collect(),
        ))
    } else if trimmed.starts_with('{') {
        let one: Box<RawValue> = serde_json::from_str(text).map_err(|e| BodyError {
            code: code::PARSE_ERROR,
            message: format!("the body is not JSON: {e}"),
        })?;
        Ok(Body::Single(call(table, one)))
    } else {
        Err(BodyError {
            code: code::INVALID_REQUEST,
            message: "the body is a JSON-RPC object or a batch array".into(),
        })
    }
}

/// A JSON-RPC error response object, the `id` echoed exactly as written.
#[must_use]
pub fn error_object(
    id: Option<&RawValue>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Box<RawValue> {
    let mut err = serde_json::json!({ "code": code, "message": message });
    if let Some(d) = data {
        err["data"] = d;
    }
    let text = format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{err}}}"#,
        id.map_or("null", RawValue::get)
    );
    RawValue::from_string(text).expect("valid JSON")
}

/// A JSON array of raw JSON values.
#[must_use]
pub fn raw_array<'a>(items: impl IntoIterator<Item = &'a RawValue>) -> Box<RawValue> {
    let mut text = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(item.get());
    }
    text.push(']');
    RawValue::from_string(text).expect("valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> AddressTable {
        AddressTable::ethereum()
    }

    fn single(body: &str) -> Result<Call, Invalid> {
        match parse(body.as_bytes(), &table(), 100).unwrap() {
            Body::Single(c) => c,
            Body::Batch(_) => panic!("batch"),
        }
    }

    const A: &str = "0x1937C4dD0AD26Ee5F1A5b9E6d0Bc2E2b5F2Ef9aB";

    #[test]
    fn addresses_come_from_the_table() {
        let c = single(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["{A}","latest"]}}"#
        ))
        .unwrap();
        assert_eq!(c.addresses, [A.to_ascii_lowercase()]);
        assert_eq!(c.id.unwrap().get(), "1");
        let c = single(&format!(
            r#"{{"jsonrpc":"2.0","id":"x","method":"eth_call","params":[{{"to":"{A}","data":"0x"}},"latest"]}}"#
        ))
        .unwrap();
        assert_eq!(c.addresses.len(), 1);
        let c = single(&format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"eth_getLogs","params":[{{"address":["{A}","{A}"]}}]}}"#
        ))
        .unwrap();
        assert_eq!(c.addresses.len(), 2);
        let c =
            single(r#"{"jsonrpc":"2.0","id":3,"method":"eth_blockNumber","params":[]}"#).unwrap();
        assert!(c.addresses.is_empty());
        let c = single(r#"{"jsonrpc":"2.0","method":"eth_blockNumber"}"#).unwrap();
        assert!(c.id.is_none(), "a notification");
    }

    #[test]
    fn a_non_address_at_an_address_position_is_invalid_not_unrestricted() {
        for params in [
            r#"[123,"latest"]"#,
            r#"[{"a":1},"latest"]"#,
            r#"["0x12","latest"]"#,
            r#"[["0x1937C4dD0AD26Ee5F1A5b9E6d0Bc2E2b5F2Ef9aB"],"latest"]"#,
        ] {
            let e = single(&format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"eth_getBalance","params":{params}}}"#
            ))
            .unwrap_err();
            assert_eq!(e.code, code::INVALID_PARAMS, "{params}");
            assert_eq!(e.id.unwrap().get(), "7");
        }
        for params in [
            r#"[{"to":5}]"#,
            r#"[{"to":{"x":1}}]"#,
            r#"["0x"]"#,
            r#"[{"to":["0x1"]}]"#,
        ] {
            let e = single(&format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"eth_call","params":{params}}}"#
            ))
            .unwrap_err();
            assert_eq!(e.code, code::INVALID_PARAMS, "{params}");
        }
    }

    /// A batch past `max_calls` is refused as it is read (its calls past
    /// the cap are never built); at the cap it is parsed; a malformed batch
    /// is still a parse error, and an empty one invalid.
    #[test]
    fn a_batch_past_the_cap_is_refused_as_it_is_read() {
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#;
        let batch = |n: usize| format!("[{}]", vec![call; n].join(","));
        assert!(matches!(
            parse(batch(3).as_bytes(), &table(), 3),
            Ok(Body::Batch(c)) if c.len() == 3
        ));
        let e = parse(batch(4).as_bytes(), &table(), 3).unwrap_err();
        assert_eq!(e.code, code::INVALID_REQUEST);
        assert!(e.message.contains("more than 3 calls"), "{}", e.message);
        let zeros = format!("[{}]", vec!["0"; 500_000].join(","));
        let e = parse(zeros.as_bytes(), &table(), 100).unwrap_err();
        assert_eq!(e.code, code::INVALID_REQUEST, "{}", e.message);
        let e = parse(b"[1,", &table(), 100).unwrap_err();
        assert_eq!(e.code, code::PARSE_ERROR);
        let e = parse(b"[]", &table(), 100).unwrap_err();
        assert_eq!(e.code, code::INVALID_REQUEST);
    }

    #[test]
    fn keys_that_fold_alike_are_duplicates() {
        // Go's encoding/json matches keys case-insensitively (ſ as s, K as k):
        // a second spelling would be the one the node runs.
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[],"METHOD":"eth_sendTransaction"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"to":"0x0000000000000000000000000000000000000001","TO":"0x0000000000000000000000000000000000000002"}]}"#,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_call\",\"params\":[],\"param\u{17f}\":[]}",
            r#"{"jsonrpc":"2.0","id":1,"ID":2,"method":"eth_blockNumber"}"#,
        ] {
            let e = parse(body.as_bytes(), &table(), 100).unwrap_err();
            assert!(e.message.contains("duplicate key"), "{body}: {}", e.message);
        }
        // Full case mapping folds too: `ß` is `ss`, `ı` is `i`.
        for body in [
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_getLogs\",\"params\":[{\"address\":\"0x00000000000000000000000000000000000000b2\",\"addre\u{df}\":null}]}",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"\u{131}d\":2,\"method\":\"eth_chainId\"}",
        ] {
            let e = parse(body.as_bytes(), &table(), 100).unwrap_err();
            assert!(e.message.contains("duplicate key"), "{body}: {}", e.message);
        }
    }

    #[test]
    fn a_key_spelled_another_way_is_refused_not_read() {
        // Go's encoding/json would read these as the key, serde and Jackson
        // would not: either reading could be the node's, so neither is taken.
        for (body, want) in [
            (
                format!(r#"{{"JSONRPC":"2.0","id":1,"method":"eth_call","params":[{{"to":"{A}"}}]}}"#),
                code::INVALID_REQUEST,
            ),
            (
                format!(r#"{{"jsonrpc":"2.0","id":1,"Method":"eth_call","params":[{{"to":"{A}"}}]}}"#),
                code::INVALID_REQUEST,
            ),
            (
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","PARAMS":[{{"to":"{A}"}}]}}"#),
                code::INVALID_REQUEST,
            ),
            (
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{{"To":"{A}"}}]}}"#),
                code::INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_getLogs","params":[{"ADDRESS":"0x00000000000000000000000000000000000000b2"}]}"#.to_owned(),
                code::INVALID_PARAMS,
            ),
            // `addreß` folds to `address` in Rust, not in Go: a node that
            // ignores the key would read every contract's logs.
            (
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_getLogs\",\"params\":[{\"addre\u{df}\":\"0x00000000000000000000000000000000000000b2\"}]}".to_owned(),
                code::INVALID_PARAMS,
            ),
            // Go reads `ſ` as `s`.
            (
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_getLogs\",\"params\":[{\"addre\u{17f}s\":\"0x00000000000000000000000000000000000000b2\"}]}".to_owned(),
                code::INVALID_PARAMS,
            ),
            (
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_getLogs\",\"param\u{17f}\":[{}]}".to_owned(),
                code::INVALID_REQUEST,
            ),
        ] {
            let e = single(&body).expect_err(&body);
            assert_eq!(e.code, want, "{body}: {}", e.message);
            assert!(e.message.contains("is not spelled"), "{body}: {}", e.message);
        }
        // The id is echoed when it was spelled right, not otherwise.
        let e = single(r#"{"jsonrpc":"2.0","id":5,"Method":"eth_chainId"}"#).unwrap_err();
        assert_eq!(e.id.unwrap().get(), "5");
        let e = single(r#"{"jsonrpc":"2.0","ID":5,"method":"eth_chainId"}"#).unwrap_err();
        assert!(e.id.is_none());
        // Keys the gateway does not read may be spelled as the caller likes.
        let c = single(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{{"to":"{A}","DATA":"0x"}}]}}"#
        ))
        .unwrap();
        assert_eq!(c.addresses, [A.to_ascii_lowercase()]);
    }

    #[test]
    fn methods_not_known_to_touch_no_address_carry_any() {
        for method in [
            "eth_callMany",
            "trace_callMany",
            "trace_filter",
            "personal_unlockAccount",
            "evm_setAccountBalance",
            "my_custom",
        ] {
            let c = single(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":["{A}"]}}"#
            ))
            .unwrap();
            assert_eq!(c.addresses, [ANY], "{method}");
            let c = single(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"a":"{A}"}}}}"#
            ))
            .unwrap();
            assert_eq!(c.addresses, [ANY], "{method} by name");
        }
        for method in [
            "eth_blockNumber",
            "eth_chainId",
            "eth_sendRawTransaction",
            "eth_getTransactionReceipt",
        ] {
            let c = single(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":["0x01"]}}"#
            ))
            .unwrap();
            assert!(c.addresses.is_empty(), "{method}");
        }
        let c = single(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"debug_storageRangeAt","params":["0x01",0,"{A}","0x00",1]}}"#
        ))
        .unwrap();
        assert_eq!(c.addresses, [A.to_ascii_lowercase()]);
        // An operator can declare a method address-free.
        let mut t = table();
        t.set("my_custom", &[]).unwrap();
        let Body::Single(Ok(c)) = parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"my_custom","params":[]}"#,
            &t,
            10,
        )
        .unwrap() else {
            panic!("one valid call")
        };
        assert!(c.addresses.is_empty());
    }

    #[test]
    fn a_call_nothing_bounds_carries_any() {
        for (method, params) in [
            ("eth_getLogs", "[{}]"),
            ("eth_getLogs", r#"[{"address":null}]"#),
            ("eth_getLogs", r#"[{"address":[]}]"#),
            ("eth_getLogs", "[null]"),
            ("eth_getLogs", "[]"),
            ("eth_newFilter", r#"[{"fromBlock":"0x0"}]"#),
            ("eth_call", r#"[{"data":"0x6000"}]"#),
            ("eth_estimateGas", r#"[{"to":null,"data":"0x6000"}]"#),
            (
                "eth_call",
                r#"[{"to":"0x0000000000000000000000000000000000000001"},"latest",{"0x0000000000000000000000000000000000000001":{"code":"0x00"}}]"#,
            ),
            ("eth_simulateV1", r#"[{"blockStateCalls":[]}]"#),
            (
                "eth_getBalance",
                r#"{"address":"0x0000000000000000000000000000000000000001"}"#,
            ),
            ("eth_subscribe", r#"["logs",{}]"#),
            ("eth_subscribe", r#"["logs"]"#),
            (
                "eth_subscribe",
                r#"["myKind",{"address":"0x0000000000000000000000000000000000000001"}]"#,
            ),
            ("eth_subscribe", "[]"),
            (
                "trace_call",
                r#"[{"to":"0x0000000000000000000000000000000000000001","data":"0x"},["trace"],"latest",{"0x0000000000000000000000000000000000000001":{"code":"0x00"}}]"#,
            ),
            (
                "eth_createAccessList",
                r#"[{"to":"0x0000000000000000000000000000000000000001"},"latest",{"0x0000000000000000000000000000000000000001":{"code":"0x00"}}]"#,
            ),
            (
                "debug_traceTransaction",
                r#"["0x00",{"tracer":"{result: function(ctx, db) { return db.getState('0x0000000000000000000000000000000000000002', '0x00') }, fault: function() {}}"}]"#,
            ),
            (
                "debug_traceBlockByHash",
                r#"["0x00",{"tracer":"callTracer"}]"#,
            ),
            ("debug_traceBlockByNumber", r#"["latest",{}]"#),
            ("eth_getFilterLogs", r#"["0x7"]"#),
            ("eth_getFilterChanges", r#"["0x7"]"#),
            ("eth_uninstallFilter", r#"["0x7"]"#),
        ] {
            let c = single(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#
            ))
            .unwrap();
            assert!(
                c.addresses.iter().any(|a| a == ANY),
                "{method} {params}: {:?}",
                c.addresses
            );
        }
        let c =
            single(r#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}"#)
                .unwrap();
        assert!(c.addresses.is_empty());
        // Without a tracer config a trace touches no address.
        for (method, params) in [
            ("debug_traceTransaction", r#"["0x00"]"#),
            ("debug_traceBlockByNumber", r#"["latest",null]"#),
            (
                "trace_call",
                r#"[{"to":"0x0000000000000000000000000000000000000001"},["trace"],"latest"]"#,
            ),
        ] {
            let c = single(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#
            ))
            .unwrap();
            assert!(
                !c.addresses.iter().any(|a| a == ANY),
                "{method} {params}: {:?}",
                c.addresses
            );
        }
        let c = single(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["logs",{{"address":"{A}"}}]}}"#
        ))
        .unwrap();
        assert_eq!(c.addresses, [A.to_ascii_lowercase()]);
    }

    /// An EIP-7702 `authorizationList` delegates an account to any code for
    /// the call: with one entry (any spelling the node reads as the key),
    /// every call-object method is unbounded; absent, null or empty, the
    /// call is bounded by its `to`.
    #[test]
    fn an_authorization_list_makes_a_call_unbounded() {
        let auth = r#"[{"chainId":"0x1","address":"0x0000000000000000000000000000000000000002","nonce":"0x0","yParity":"0x0","r":"0x1","s":"0x1"}]"#;
        for method in [
            "eth_call",
            "eth_estimateGas",
            "eth_createAccessList",
            "debug_traceCall",
            "trace_call",
            "eth_sendTransaction",
            "eth_signTransaction",
            "personal_sendTransaction",
            "personal_signTransaction",
        ] {
            let call = |list: &str| {
                single(&format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":[{{"from":"{A}","to":"{A}","data":"0x","authorizationList":{list}}}]}}"#
                ))
            };
            let c = call(auth).unwrap();
            assert!(
                c.addresses.iter().any(|a| a == ANY),
                "{method}: {:?}",
                c.addresses
            );
            for none in ["null", "[]"] {
                let c = call(none).unwrap();
                assert!(
                    !c.addresses.iter().any(|a| a == ANY),
                    "{method} {none}: {:?}",
                    c.addresses
                );
            }
        }
        // Another spelling of the key is refused, not read past.
        let e = single(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{{"to":"{A}","AuthorizationList":{auth}}}]}}"#
        ))
        .unwrap_err();
        assert!(e.message.contains("authorizationList"), "{}", e.message);
        // The position form parses and renders.
        let p = ParamPath::parse("0.authorizationList!").unwrap();
        assert_eq!(p.render(), "0.authorizationList!");
        assert!(ParamPath::parse("0.!").is_err() && ParamPath::parse("x.a!").is_err());
    }

    #[test]
    fn too_many_addresses_are_invalid_and_ids_are_echoed_as_written() {
        let many = vec![format!("\"{A}\""); MAX_ADDRESSES + 1].join(",");
        let e = single(&format!(
            r#"{{"jsonrpc":"2.0","id":1e0,"method":"eth_getLogs","params":[{{"address":[{many}]}}]}}"#
        ))
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_PARAMS);
        assert_eq!(e.id.unwrap().get(), "1e0");
        let c = single(r#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"eth_chainId"}"#)
            .unwrap();
        assert_eq!(c.id.unwrap().get(), "18446744073709551616");
        let e = single(r#"{"jsonrpc":"2.0","id":{"a":1},"method":"eth_chainId"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_REQUEST);
    }

    #[test]
    fn duplicate_keys_anywhere_are_refused() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","method":"eth_sendTransaction"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"to":"0x0000000000000000000000000000000000000001","to":"0x0000000000000000000000000000000000000002"}]}"#,
            r#"[{"jsonrpc":"2.0","id":1,"id":2,"method":"eth_blockNumber"}]"#,
        ] {
            let e = parse(body.as_bytes(), &table(), 100).unwrap_err();
            assert_eq!(e.code, code::PARSE_ERROR, "{body}");
            assert!(e.message.contains("duplicate key"), "{}", e.message);
        }
    }

    #[test]
    fn batches_keep_order_and_mark_bad_elements() {
        let body = r#"[{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}, 5, {"jsonrpc":"2.0","id":3}, {"jsonrpc":"1.0","id":4,"method":"x"}]"#;
        let Body::Batch(calls) = parse(body.as_bytes(), &table(), 100).unwrap() else {
            panic!("not a batch")
        };
        assert_eq!(calls.len(), 4);
        assert!(calls[0].is_ok());
        assert_eq!(calls[1].as_ref().unwrap_err().code, code::INVALID_REQUEST);
        assert_eq!(
            calls[2].as_ref().unwrap_err().id.as_ref().unwrap().get(),
            "3"
        );
        assert!(calls[3].is_err());
        assert_eq!(
            calls[0].as_ref().unwrap().raw.get(),
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#
        );
        assert_eq!(
            parse(b"[]", &table(), 100).unwrap_err().code,
            code::INVALID_REQUEST
        );
        let many = format!(
            "[{}]",
            [r#"{"jsonrpc":"2.0","id":1,"method":"a"}"#; 3].join(",")
        );
        assert_eq!(
            parse(many.as_bytes(), &table(), 2).unwrap_err().code,
            code::INVALID_REQUEST
        );
        assert_eq!(
            parse(b"{", &table(), 2).unwrap_err().code,
            code::PARSE_ERROR
        );
        assert_eq!(
            parse(b"\"x\"", &table(), 2).unwrap_err().code,
            code::INVALID_REQUEST
        );
        assert_eq!(
            parse(b"\xff", &table(), 2).unwrap_err().code,
            code::PARSE_ERROR
        );
    }

    #[test]
    fn the_table_can_be_extended_and_rows_removed() {
        let mut t = AddressTable::ethereum();
        t.set("my_method", &["1.contract".into()]).unwrap();
        t.set("eth_getBalance", &[]).unwrap();
        assert!(
            t.rows()
                .any(|(m, ps)| m == "my_method" && ps == ["1.contract"])
        );
        assert!(
            t.rows()
                .any(|(m, ps)| m == "eth_getBalance" && ps.is_empty())
        );
        assert!(t.set("x", &["a".into()]).is_err());
        assert!(t.set("x", &["0.a.b".into()]).is_err());
        assert!(t.set("x", &["0[]".into()]).is_err());
        assert!(t.set("x", &["0.addre\u{df}".into()]).is_err());
        t.set("x", &["2!".into(), "*".into(), "0.a[]".into()])
            .unwrap();
        assert!(
            t.rows()
                .any(|(m, ps)| m == "x" && ps == ["2!", "*", "0.a[]"])
        );
        // An operator's eth_subscribe row replaces the built-in handling of
        // its kinds (it was accepted and then ignored).
        let heads = br#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newPendingTransactions",true]}"#;
        let addresses = |t: &AddressTable| match parse(heads, t, 10).unwrap() {
            Body::Single(c) => c.unwrap().addresses,
            Body::Batch(_) => panic!("batch"),
        };
        assert!(addresses(&t).is_empty(), "built in: touches no address");
        t.set("eth_subscribe", &["*".into()]).unwrap();
        assert_eq!(addresses(&t), [ANY]);
    }

    /// A method that makes the node sign (on a node holding unlocked keys)
    /// touches its signing account: `eth_sign`'s first parameter, and a
    /// transaction's `from` (before, only `to` was checked, so a token
    /// limited to one contract could spend any account the node holds).
    #[test]
    fn the_signing_account_is_an_address_the_call_touches() {
        const B: &str = "0x90F8bf6A479f320ead074411a4B0e7944Ea8c9C1";
        for method in [
            "eth_sendTransaction",
            "eth_signTransaction",
            "personal_sendTransaction",
            "personal_signTransaction",
        ] {
            let c = single(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":[{{"from":"{B}","to":"{A}","data":"0x"}}]}}"#
            ))
            .unwrap();
            let mut got = c.addresses.clone();
            got.sort();
            let mut want = vec![A.to_ascii_lowercase(), B.to_ascii_lowercase()];
            want.sort();
            assert_eq!(got, want, "{method}");
            // Without `from` the node picks the account: unbounded.
            let c = single(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":[{{"to":"{A}"}}]}}"#
            ))
            .unwrap();
            assert!(
                c.addresses.iter().any(|a| a == ANY),
                "{method}: {:?}",
                c.addresses
            );
        }
        let c = single(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"eth_sign","params":["{B}","0x00"]}}"#
        ))
        .unwrap();
        assert_eq!(c.addresses, [B.to_ascii_lowercase()]);
    }
}
