//! Hot reload: re-read the whole config (and every file it names) on demand
//! (SIGHUP, in the binary) or when a watched file changed; a config that does
//! not validate is rejected whole and the current snapshot keeps serving.
//! Batches in flight keep the snapshot they loaded.

use crate::config::ConfigError;
use crate::jwk::JwksKeys;
use crate::load::{KeysConfig, load};
use crate::store::KeyStore;
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// What identifies a file's version: modification time and length (from `stat`).
pub type FileStamp = (Option<SystemTime>, u64);

/// How far a file's modification time may lag the clock (coarse kernel
/// timestamps, 2-second FAT times, a file server's clock): a file stamped after
/// it was read counts as written during the read when modified less than this
/// before the read began.
pub const MTIME_SLACK: Duration = Duration::from_secs(2);

/// Reads of the config's files in one reload while one of them keeps
/// changing under the read.
const READ_ATTEMPTS: u32 = 3;

/// The pause before reading again a file that changed while it was read.
const REREAD_AFTER: Duration = Duration::from_millis(100);

/// Whether a stamp taken after a read, of a file whose read began at `since`,
/// shows a file left alone during the read. A file without a modification time
/// (or gone) cannot tell and counts as settled, as it did before.
fn settled(stamp: Option<&FileStamp>, since: SystemTime) -> bool {
    match stamp {
        Some((Some(modified), _)) => *modified + MTIME_SLACK < since,
        _ => true,
    }
}

/// Reads a file (the binary passes `jotd_transport::files::read_file`).
pub type Reader = Box<dyn Fn(&Path) -> io::Result<Vec<u8>> + Send + Sync>;
/// Reads and validates the whole config again (a reload): the binary that
/// owns the file parses it (its own sections too) and calls
/// [`load_section`](crate::load_section).
pub type Loader = Box<dyn Fn() -> Result<KeysConfig, ConfigError> + Send + Sync>;
/// Stats a file (the binary passes a `std::fs::metadata` wrapper); `None` when missing.
pub type Stamper = Box<dyn Fn(&Path) -> Option<FileStamp> + Send + Sync>;

/// Keys fetched from JWKS URLs, by (tenant id, URL); kept across reloads.
pub type FetchedJwks = HashMap<(String, String), Arc<JwksKeys>>;

/// Reload counters, for metrics and health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads that swapped a new snapshot in.
    pub ok: u64,
    /// Reloads rejected (the old snapshot kept serving).
    pub failed: u64,
    /// The last rejection, until a reload succeeds.
    pub last_error: Option<ConfigError>,
}

struct State {
    stamps: Vec<(PathBuf, Option<FileStamp>)>,
    /// A file stamped after it was read (named for the first time) was modified
    /// after its read may have begun: the next check reads everything again.
    unsettled: bool,
    fetched: FetchedJwks,
    status: ReloadStatus,
    /// The last rejected reload: the stamps its files had before it read
    /// them, and when. Unchanged files are not read again before
    /// [`RETRY_REJECTED`] (a broken config was re-read and logged as
    /// rejected on every watch tick).
    rejected: Option<(HashMap<PathBuf, Option<FileStamp>>, Instant)>,
}

/// How long `reload_if_changed` leaves a rejected config alone while none of
/// its files changed. Not for ever: the fix may be a file the rejected config
/// named for the first time (a missing denylist now written), which the
/// stamps of the serving config do not cover.
pub(crate) const RETRY_REJECTED: Duration = Duration::from_secs(60);

/// Owns the config's lifecycle: initial load, reloads, snapshot rebuilds when JWKS keys change.
pub struct Reloader {
    path: PathBuf,
    store: Arc<KeyStore>,
    loader: Loader,
    stamp: Stamper,
    /// The config serving, published for readers that must not wait: the
    /// fetcher reads it on the runtime's threads, while `state` is held for a
    /// whole snapshot build (a second for 100k tenants). Written only with
    /// `state` held.
    config: ArcSwap<KeysConfig>,
    /// The `(tenant, URL)` sources `state.fetched` holds keys for, published
    /// the same way (the fetcher asks on the runtime's threads after each
    /// config change).
    fetched_sources: ArcSwap<HashSet<(String, String)>>,
    state: Mutex<State>,
    /// One reload at a time. Held while the files are read and parsed, which can take
    /// seconds for a large config; `state` is not (only while the snapshot is
    /// built), and [`Reloader::config`] takes no lock at all.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Loads a file that holds the keys section alone for the first time and
    /// creates the store (generation 1); reloads read it the same way.
    ///
    /// # Errors
    /// The config does not validate.
    pub fn start(path: &Path, read: Reader, stamp: Stamper) -> Result<Self, ConfigError> {
        let since = SystemTime::now();
        let config = load(path, &*read)?;
        let owned = path.to_owned();
        let loader: Loader = Box::new(move || load(&owned, &*read));
        Ok(Self::with_loader(config, loader, stamp, since))
    }

    /// Creates the store (generation 1) from a config the caller loaded, having
    /// begun to read its files at `read_since`; reloads call `loader`.
    ///
    /// Its files are stamped now, after they were read: one modified since
    /// `read_since` (less [`MTIME_SLACK`]) may have been read half-written, so the
    /// first check reads everything again.
    #[must_use]
    pub fn with_loader(
        config: KeysConfig,
        loader: Loader,
        stamp: Stamper,
        read_since: SystemTime,
    ) -> Self {
        let path = config.file.clone();
        let stamps: Vec<_> = config.files.iter().map(|f| (f.clone(), stamp(f))).collect();
        let unsettled = stamps.iter().any(|(_, s)| !settled(s.as_ref(), read_since));
        let store = Arc::new(KeyStore::new(config.snapshot(1, &|_, _| None)));
        let state = State {
            stamps,
            unsettled,
            fetched: FetchedJwks::new(),
            status: ReloadStatus::default(),
            rejected: None,
        };
        Self {
            path,
            store,
            loader,
            stamp,
            config: ArcSwap::from_pointee(config),
            fetched_sources: ArcSwap::default(),
            state: Mutex::new(state),
            reloading: Mutex::new(()),
        }
    }

    /// The store readers load snapshots from.
    #[must_use]
    pub fn store(&self) -> Arc<KeyStore> {
        Arc::clone(&self.store)
    }

    /// The config currently serving (for listing JWKS sources, say). Shared,
    /// not copied: a reload replaces it, it never changes in place. Takes no
    /// lock (a reload or a fetch's rebuild does not hold it up).
    #[must_use]
    pub fn config(&self) -> Arc<KeysConfig> {
        self.config.load_full()
    }

    /// Swaps in a snapshot of `config` with the JWKS keys fetched so far.
    fn install(&self, config: &KeysConfig, fetched: &FetchedJwks) -> u64 {
        let keys = |t: &str, u: &str| fetched.get(&(t.to_owned(), u.to_owned())).cloned();
        let snapshot = |g| Ok::<_, std::convert::Infallible>(config.snapshot(g, &keys));
        self.store
            .replace(snapshot)
            .unwrap_or_else(|never| match never {})
    }

    /// Reload counters and the last error.
    #[must_use]
    pub fn status(&self) -> ReloadStatus {
        self.lock().status.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads everything and swaps a new snapshot in; on error keeps serving
    /// the current one and returns (and remembers) the error.
    ///
    /// # Errors
    /// The new config does not validate.
    pub fn reload(&self) -> Result<u64, ConfigError> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Files are stamped before they are read: a file read while it was being
        // rewritten (truncated, then written) keeps its old stamp, so the next check sees
        // it changed and reads it again. Stamped after the read, the half-written content
        // would stay in service until the file changed once more.
        // The files watched: the running config's, then also those a read
        // finds the new config naming (a denylist or JWKS file named for the
        // first time has no stamp from before its first read: it gets one,
        // and one more read, so its read is checked like any other).
        // A set: a config of 100k key files compared as lists was n².
        let mut watched: HashSet<PathBuf> =
            self.lock().stamps.iter().map(|(f, _)| f.clone()).collect();
        let stamp_all =
            |files: &mut dyn Iterator<Item = &PathBuf>| -> HashMap<PathBuf, Option<FileStamp>> {
                files.map(|f| (f.clone(), (self.stamp)(f))).collect()
            };
        let mut before = stamp_all(&mut watched.iter());
        let mut since = SystemTime::now();
        let mut loaded = (self.loader)();
        // A file whose stamp moved while it was read may have been read
        // half-written (a denylist cut inside an entry still parses): it is
        // read again at once, a moment apart, rather than served until the
        // next check. One still moving after that is not installed: the
        // running config stays and the next check reads it again.
        for attempt in 1.. {
            // Compared: the files both the last stamps and this read's config
            // name (one the new config dropped does not hold it up).
            let files: HashSet<PathBuf> = match &loaded {
                Ok(c) => c.files.iter().cloned().collect(),
                Err(_) => watched.clone(),
            };
            let shared: Vec<PathBuf> = files.intersection(&watched).cloned().collect();
            let after = stamp_all(&mut shared.iter());
            let moved: Vec<&PathBuf> = shared
                .iter()
                .filter(|f| before.get(*f) != after.get(*f))
                .collect();
            let new: Vec<&PathBuf> = files.difference(&watched).collect();
            if moved.is_empty() && new.is_empty() {
                break;
            }
            if attempt == READ_ATTEMPTS {
                if moved.is_empty() {
                    // Only files named anew, read once: the old rule
                    // (`settled`, below) judges them.
                    break;
                }
                let moved: Vec<String> = moved.iter().map(|f| f.display().to_string()).collect();
                loaded = Err(ConfigError {
                    file: self.path.clone(),
                    line: None,
                    key: String::new(),
                    message: format!(
                        "{} kept changing while it was read ({READ_ATTEMPTS} reads); the running config stays, and the next check reads it again",
                        moved.join(", ")
                    ),
                });
                break;
            }
            if !moved.is_empty() {
                std::thread::sleep(REREAD_AFTER);
            }
            watched = files;
            before = stamp_all(&mut watched.iter());
            since = SystemTime::now();
            loaded = (self.loader)();
        }
        let mut state = self.lock();
        let result = loaded.map(|config| {
            let mut unsettled = false;
            let stamps = config
                .files
                .iter()
                .map(|f| {
                    // A file the config names for the first time has no earlier stamp:
                    // stamped now, and read again if it was modified after the read began.
                    let stamp = before.get(f).cloned().unwrap_or_else(|| {
                        let late = (self.stamp)(f);
                        unsettled |= !settled(late.as_ref(), since);
                        late
                    });
                    (f.clone(), stamp)
                })
                .collect();
            let generation = self.install(&config, &state.fetched);
            (config, stamps, unsettled, generation)
        });
        match result {
            Ok((config, stamps, unsettled, generation)) => {
                state.rejected = None;
                // Keys fetched for a source the config no longer names go: a
                // tenant removed and later added back must not come back with
                // keys its identity provider may have retired meanwhile.
                let named = named_sources(&config);
                state
                    .fetched
                    .retain(|(tenant, url), _| named.contains(&(tenant.as_str(), url.as_str())));
                self.publish_fetched(&state.fetched);
                self.config.store(Arc::new(config));
                state.stamps = stamps;
                state.unsettled = unsettled;
                state.status.ok += 1;
                state.status.last_error = None;
                Ok(generation)
            }
            Err(e) => {
                state.status.failed += 1;
                state.status.last_error = Some(e.clone());
                state.rejected = Some((before, Instant::now()));
                Err(e)
            }
        }
    }

    /// Reloads when any file the config was built from changed (by stamp), or
    /// when one was stamped only after it was read and had been modified since
    /// the read began (see [`Reloader::with_loader`]). Returns `None` when
    /// nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<u64, ConfigError>> {
        let changed = {
            let state = self.lock();
            let now: Vec<_> = state.stamps.iter().map(|(f, _)| (self.stamp)(f)).collect();
            let changed =
                state.unsettled || state.stamps.iter().zip(&now).any(|((_, s), n)| n != s);
            // Rejected already, with every file as it was then: not again yet.
            let same_as_rejected = state.rejected.as_ref().is_some_and(|(stamps, at)| {
                at.elapsed() < RETRY_REJECTED
                    && state
                        .stamps
                        .iter()
                        .zip(&now)
                        .all(|((f, _), n)| stamps.get(f) == Some(n))
            });
            changed && !same_as_rejected
        };
        changed.then(|| self.reload())
    }

    /// Whether keys fetched for `tenant`'s source `url` are installed. Takes
    /// no lock.
    #[must_use]
    pub fn has_fetched(&self, tenant: &str, url: &str) -> bool {
        self.fetched_sources
            .load()
            .contains(&(tenant.to_owned(), url.to_owned()))
    }

    /// Publishes which sources `fetched` holds (called with `state` held).
    fn publish_fetched(&self, fetched: &FetchedJwks) {
        self.fetched_sources
            .store(Arc::new(fetched.keys().cloned().collect()));
    }

    /// The kids `tenant` has from two sources with other key material, with
    /// the URL sources' keys fetched so far ([`KeysConfig::shadowed_in`]).
    #[must_use]
    pub fn shadowed_kids(&self, tenant: &str) -> Vec<String> {
        let state = self.lock();
        let keys = |t: &str, u: &str| state.fetched.get(&(t.to_owned(), u.to_owned())).cloned();
        self.config.load().shadowed_in(tenant, &keys)
    }

    /// The same for every tenant, `(tenant id, kid)`: after a reload, which
    /// may list a source ahead of one already fetched.
    #[must_use]
    pub fn shadowed_all(&self) -> Vec<(String, String)> {
        let state = self.lock();
        let keys = |t: &str, u: &str| state.fetched.get(&(t.to_owned(), u.to_owned())).cloned();
        self.config.load().shadowed_all(&keys)
    }

    /// Installs keys fetched for one JWKS URL and rebuilds the snapshot from the
    /// current config (no files are read). Returns the new generation, or the
    /// current one when every tenant already holds the same keys from `url`
    /// (nothing is rebuilt).
    /// Keys for a source the current config no longer names (a fetch that
    /// finished after a reload removed it) are dropped.
    pub fn set_fetched(&self, tenant: &str, url: &str, keys: Arc<JwksKeys>) -> u64 {
        self.set_fetched_many(&[tenant], url, keys)
    }

    /// [`Reloader::set_fetched`] for several tenants reading one URL alike:
    /// one snapshot rebuild for all of them.
    pub fn set_fetched_many(&self, tenants: &[&str], url: &str, keys: Arc<JwksKeys>) -> u64 {
        let mut state = self.lock();
        let config = self.config.load_full();
        // The tenants the current config has read `url` (one pass, however
        // many tenants share it) the way these keys were read: keys for a
        // source no longer named are dropped, and so are keys read under an
        // `alg` or `symmetric_keys` the source no longer has (a fetch begun
        // before a reload changed them, finishing after the new one, would
        // replace the new keys with ones the snapshot ignores, or, for a
        // flag turned on, with the same document read without its secrets).
        let naming: HashSet<&str> = config
            .tenants
            .iter()
            .filter(|t| {
                t.jwks.iter().any(|s| {
                    matches!(&s.location, crate::JwksLocation::Url(u) if u == url)
                        && s.alg == keys.parsed_alg
                        && s.symmetric_keys == keys.parsed_symmetric
                })
            })
            .map(|t| &*t.tenant.id)
            .collect();
        let named: Vec<String> = tenants
            .iter()
            .filter(|t| naming.contains(**t))
            .map(|t| (*t).to_owned())
            .collect();
        let unchanged = named.iter().all(|t| {
            state
                .fetched
                .get(&(t.clone(), url.to_owned()))
                .is_some_and(|held| held.same_as(&keys))
        });
        if unchanged {
            // The same document again (a periodic refresh, a refetch for an
            // unknown kid it does not hold): the snapshot serving is already
            // built from these keys; rebuilding every tenant would only cost.
            return self.store.load().generation();
        }
        for tenant in &named {
            state
                .fetched
                .insert((tenant.clone(), url.to_owned()), Arc::clone(&keys));
        }
        let rebuild: HashSet<&str> = named.iter().map(String::as_str).collect();
        self.publish_and_rebuild(&state.fetched, &config, &rebuild)
    }

    /// Publishes which sources `fetched` holds and rebuilds `tenants` from
    /// `config` and it (called with `state` held, `fetched` its map). Only
    /// these tenants' keys changed: every other tenant of the serving
    /// snapshot (built under this lock from this config) is carried over, so
    /// a fetch costs the tenants that read the URL, not all of them.
    fn publish_and_rebuild(
        &self,
        fetched: &FetchedJwks,
        config: &KeysConfig,
        tenants: &HashSet<&str>,
    ) -> u64 {
        self.publish_fetched(fetched);
        let keys = |t: &str, u: &str| fetched.get(&(t.to_owned(), u.to_owned())).cloned();
        let base = self.store.load();
        let snapshot = |g| {
            Ok::<_, std::convert::Infallible>(config.snapshot_rebuilding(
                g,
                &base,
                &|t| tenants.contains(t),
                &keys,
            ))
        };
        self.store
            .replace(snapshot)
            .unwrap_or_else(|never| match never {})
    }

    /// Drops the keys fetched for `url` of each of `tenants` (the fetcher's
    /// `max_stale` ran out with the source failing) and rebuilds those
    /// tenants. Returns the new generation, or the current one when none of
    /// them held keys from `url`.
    pub fn forget_fetched_many(&self, tenants: &[&str], url: &str) -> u64 {
        let mut state = self.lock();
        let mut forgotten: HashSet<&str> = HashSet::new();
        for tenant in tenants {
            if state
                .fetched
                .remove(&((*tenant).to_owned(), url.to_owned()))
                .is_some()
            {
                forgotten.insert(tenant);
            }
        }
        if forgotten.is_empty() {
            return self.store.load().generation();
        }
        let config = self.config.load_full();
        self.publish_and_rebuild(&state.fetched, &config, &forgotten)
    }
}

/// Every (tenant, URL) pair `config` fetches keys for, built once per
/// reload: looking each fetched source up in the tenant list was quadratic
/// (100k tenants of one identity provider: ~5 × 10⁹ comparisons under the
/// reloader's lock).
fn named_sources(config: &KeysConfig) -> std::collections::HashSet<(&str, &str)> {
    config
        .tenants
        .iter()
        .flat_map(|t| {
            t.jwks.iter().filter_map(|s| match &s.location {
                crate::JwksLocation::Url(u) => Some((&*t.tenant.id, u.as_str())),
                crate::JwksLocation::File(_) => None,
            })
        })
        .collect()
}
