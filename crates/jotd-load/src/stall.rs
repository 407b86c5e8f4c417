//! `jotd-load stall`: a hostile client, to measure what the daemon's
//! hold-ground limits do. It opens streams that each announce a request frame
//! of `--size` bytes, send `--part` bytes of it and never finish, then
//! reports what every stream got back (refused at once for the request
//! buffer, or refused after `request_timeout`) and the daemon's resident
//! memory before, while the streams are held, and after.

use anyhow::{Context, bail};
use clap::Args;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `jotd-load stall`.
#[derive(Args, Debug)]
pub(crate) struct StallArgs {
    /// The daemon's QUIC address.
    #[arg(long)]
    endpoint: SocketAddr,
    /// CA certificate (PEM) the daemon's certificate is issued by.
    #[arg(long)]
    ca: PathBuf,
    /// Server name to expect in the certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Streams to hold open.
    #[arg(long, default_value_t = 64)]
    streams: u32,
    /// The frame size each stream announces, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    size: u32,
    /// The bytes each stream sends of it.
    #[arg(long, default_value_t = 64 << 10)]
    part: usize,
    /// Longest wait for the answers, in seconds.
    #[arg(long, default_value_t = 60)]
    wait_s: u64,
    /// The daemon's metrics URL, for its resident memory.
    #[arg(long)]
    metrics_url: Option<String>,
}

pub(crate) fn stall(args: &StallArgs) -> anyhow::Result<()> {
    // A stream holds half a request: the frame must be larger than what is sent
    // of it (the 4-byte length included), or the stream sends a whole frame
    // (plus junk) and measures a refusal, not a stall.
    if args.size < 2 {
        bail!(
            "--size {}: must be at least 2 (a type byte and a request id)",
            args.size
        );
    }
    if args.part < 6 || args.part as u64 >= u64::from(args.size) + 4 {
        bail!(
            "--part {}: must be 6 to {} (less than the --size {} frame and its 4-byte length)",
            args.part,
            u64::from(args.size) + 3,
            args.size
        );
    }
    if args.streams == 0 {
        bail!("--streams 0: must be at least 1");
    }
    // One connection: past the daemon's stream credit the next stream waits
    // for one to end (its `request_timeout`), so the memory figure mixes
    // held streams and refused ones.
    if args.streams > 256 {
        eprintln!(
            "jotd-load stall: note: --streams {} on one connection; past the daemon's max_streams_per_connection (256 by default) streams open only as earlier ones are refused",
            args.streams
        );
    }
    let ca = jotd_transport::files::read_file(&args.ca)
        .with_context(|| format!("--ca {}", args.ca.display()))?;
    let rss = || {
        args.metrics_url
            .as_deref()
            .and_then(|u| crate::run::scrape(u, "process_resident_memory_bytes"))
            .map_or_else(|| "-".to_owned(), |b| format!("{:.1} MiB", b / 1_048_576.0))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("daemon rss before: {}", rss());
    rt.block_on(async {
        let tls = jotd_transport::client_config(&ca, None)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        // The daemon's family: quinn refuses an IPv6 peer on an IPv4 socket.
        let local: std::net::SocketAddr = if args.endpoint.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(local)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint
            .connect(args.endpoint, &args.server_name)?
            .await
            .context("connecting")?;
        let started = Instant::now();
        let mut held = Vec::new();
        for i in 0..args.streams {
            let (mut send, recv) = conn.open_bi().await?;
            let mut head = args.size.to_be_bytes().to_vec();
            head.push(1); // a Batch frame
            head.push(u8::try_from(i % 200).unwrap_or(0)); // its request id
            head.resize(args.part, 0);
            // A stream the daemon refused at once stops our sending: its
            // answer is still there to read.
            let _ = send.write_all(&head).await;
            held.push((send, recv));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "daemon rss with {} streams held ({} of {} bytes each): {}",
            args.streams,
            args.part,
            args.size,
            rss()
        );
        let mut answers: BTreeMap<String, (u32, Duration)> = BTreeMap::new();
        let wait = Duration::from_secs(args.wait_s);
        let tasks: Vec<_> = held
            .into_iter()
            .map(|(send, mut recv)| {
                tokio::spawn(async move {
                    let got = tokio::time::timeout(wait, recv.read_to_end(1 << 20)).await;
                    drop(send);
                    (got, started.elapsed())
                })
            })
            .collect();
        for task in tasks {
            let (kind, at) = match task.await? {
                (Err(_), at) => ("no answer".to_owned(), at),
                (Ok(Err(e)), at) => (format!("stream error: {e}"), at),
                (Ok(Ok(bytes)), at) => (answer_kind(&bytes), at),
            };
            let e = answers.entry(kind).or_insert((0, Duration::ZERO));
            e.0 += 1;
            e.1 = e.1.max(at);
        }
        for (kind, (n, last)) in &answers {
            println!("{n:>6} streams answered {kind} (the last after {last:.1?})");
        }
        anyhow::Ok(())
    })?;
    println!("daemon rss after: {}", rss());
    Ok(())
}

fn answer_kind(bytes: &[u8]) -> String {
    let limits = jotd_transport::Limits::default();
    match jotd_transport::next_frame(bytes, &limits) {
        Ok(Some(f)) if f.kind == jotd_transport::FrameType::Error => {
            match jotd_transport::decode_error(f.body) {
                Ok(e) => jotd_transport::ErrorCode::from_code(e.code)
                    .map_or_else(|| format!("error {}", e.code), |c| c.as_str().to_owned()),
                Err(e) => format!("a bad error frame: {e}"),
            }
        }
        Ok(Some(f)) => format!("a {:?} frame", f.kind),
        Ok(None) => "nothing".to_owned(),
        Err(e) => format!("a bad frame: {e}"),
    }
}
