//! Removing cached templates that will not be used again, so that the cache does not grow
//! without bound: templates of other simvm builds (never loaded by this one), damaged ones, the
//! leftovers of builds that did not finish, and, when asked, templates and notes unused for a
//! while. A template's last use is its `template.json`'s modification time ([`super::mark_used`]).
//!
//! A key's entries are removed only under its lock (`KEY.lock`, taken without waiting): a simvm
//! that is building or loading that template holds it, and the entries are then left alone. A
//! machine already started from a removed template runs on: its memory is a private mapping of
//! a file it keeps open.
//!
//! Lock files themselves stay. A simvm may have opened one and be waiting on it: were it
//! unlinked, that simvm would build under a lock nobody else can see any more, beside one that
//! opens the file anew. They are empty files.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{lock_path, read_state, FileLock, MadeBy, BUILD_PREFIX, STATE_FILE};
use crate::error::{Error, Result};

/// What [`prune`] removes besides damaged templates and unfinished builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneRules {
    /// Templates of another simvm build or template format, once unused for this long.
    pub other_builds_unused_for: Duration,
    /// Any template, and any note of machines without one, once unused for this long.
    pub unused_for: Option<Duration>,
}

/// Automatic pruning removes any template unused for this long.
const AUTOMATIC_UNUSED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Automatic pruning removes another simvm build's templates once unused for this long, not at
/// once: two checkouts sharing a cache would otherwise remove each other's templates at every
/// build, and each rebuild is a boot.
const AUTOMATIC_OTHER_BUILDS_UNUSED_FOR: Duration = Duration::from_secs(3600);

impl PruneRules {
    /// After each template build.
    pub const AUTOMATIC: Self = Self {
        other_builds_unused_for: AUTOMATIC_OTHER_BUILDS_UNUSED_FOR,
        unused_for: Some(AUTOMATIC_UNUSED_FOR),
    };
}

/// What [`prune`] did.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub removed: Vec<Removed>,
    /// Keys with entries to remove that another simvm is building or loading: left alone.
    pub busy: Vec<String>,
    /// Entries that could not be removed, and why.
    pub failed: Vec<(PathBuf, String)>,
}

impl PruneReport {
    /// The disk space freed.
    pub fn bytes(&self) -> u64 {
        self.removed.iter().map(|r| r.bytes).sum()
    }

    /// How many entries of this kind were removed.
    pub fn count(&self, kind: EntryKind) -> usize {
        self.removed.iter().filter(|r| r.kind == kind).count()
    }
}

/// An entry [`prune`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Why, e.g. "made by simvm 0.1.0+... (template format 1)".
    pub why: String,
    /// The disk space it held: allocated blocks, since memory files are sparse.
    pub bytes: u64,
}

/// The entries of `templates/` that [`prune`] may remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// `KEY/`.
    Template,
    /// `.build.KEY.PID/`: the temporary directory of a build whose simvm died before it
    /// finished (older simvm builds named it `.build.PID/`).
    UnfinishedBuild,
    /// `KEY.unavailable`: why machines of that key have no template.
    Note,
}

/// Removes from `cache/templates/` what `rules` say will not be used again, with damaged
/// templates and unfinished builds; keys another simvm holds are left alone. A cache without
/// templates is an empty report.
pub fn prune(cache: &Path, rules: PruneRules) -> Result<PruneReport> {
    let templates = cache.join("templates");
    let now = SystemTime::now();
    let mut report = PruneReport::default();
    for (key, entries) in entries_by_key(&templates)? {
        if due(&entries, &rules, now).is_empty() {
            continue;
        }
        let _lock = match &key {
            Some(key) => match FileLock::try_exclusive(&lock_path(&templates, key)) {
                Ok(Some(lock)) => Some(lock),
                Ok(None) => {
                    report.busy.push(key.clone());
                    continue;
                }
                Err(e) => {
                    report
                        .failed
                        .push((lock_path(&templates, key), e.to_string()));
                    continue;
                }
            },
            // An older simvm's unfinished build names no key: its age decides alone.
            None => None,
        };
        // Decided again under the lock: the template may have been rebuilt meanwhile.
        for (entry, why) in due(&entries, &rules, now) {
            remove(entry, why, &mut report);
        }
    }
    Ok(report)
}

/// An entry of `templates/`.
struct Entry {
    path: PathBuf,
    kind: EntryKind,
    /// Whether its name says its key, so that the key's lock guards it.
    keyed: bool,
}

/// The entries of `templates/` that [`prune`] may remove, by key, in key order (`None`: older
/// simvm builds' unfinished builds, which name no key).
fn entries_by_key(templates: &Path) -> Result<BTreeMap<Option<String>, Vec<Entry>>> {
    let cannot_list = |e: std::io::Error| Error::SnapshotFile {
        path: templates.to_path_buf(),
        reason: format!("cannot list the cached templates: {e}"),
    };
    let listing = match std::fs::read_dir(templates) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(cannot_list(e)),
    };
    let mut by_key: BTreeMap<Option<String>, Vec<Entry>> = BTreeMap::new();
    for item in listing {
        let item = item.map_err(cannot_list)?;
        let name = item.file_name();
        let Some((key, kind)) = name.to_str().and_then(classify) else {
            continue;
        };
        let entry = Entry {
            path: item.path(),
            kind,
            keyed: key.is_some(),
        };
        by_key
            .entry(key.map(str::to_owned))
            .or_default()
            .push(entry);
    }
    Ok(by_key)
}

/// What the entry named `name` is, and its key. `None` for anything simvm did not make this way,
/// and for lock files (see the module's documentation).
fn classify(name: &str) -> Option<(Option<&str>, EntryKind)> {
    if let Some(rest) = name.strip_prefix(BUILD_PREFIX) {
        return match rest.rsplit_once('.') {
            Some((key, pid)) if is_key(key) && is_number(pid) => {
                Some((Some(key), EntryKind::UnfinishedBuild))
            }
            None if is_number(rest) => Some((None, EntryKind::UnfinishedBuild)),
            _ => None,
        };
    }
    if let Some(key) = name.strip_suffix(".unavailable") {
        return is_key(key).then_some((Some(key), EntryKind::Note));
    }
    is_key(name).then_some((Some(name), EntryKind::Template))
}

/// Template keys are hexadecimal ([`super::template_key`]).
fn is_key(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The entries `rules` remove, each with why.
fn due<'a>(entries: &'a [Entry], rules: &PruneRules, now: SystemTime) -> Vec<(&'a Entry, String)> {
    entries
        .iter()
        .filter_map(|entry| why_remove(entry, rules, now).map(|why| (entry, why)))
        .collect()
}

/// Why `entry` goes under `rules`, or `None` if it stays.
fn why_remove(entry: &Entry, rules: &PruneRules, now: SystemTime) -> Option<String> {
    let path = &entry.path;
    match entry.kind {
        EntryKind::Template => why_remove_template(path, rules, now),
        EntryKind::UnfinishedBuild if entry.keyed => Some("unfinished build".into()),
        EntryKind::UnfinishedBuild => (unused_for(path, now) >= rules.other_builds_unused_for)
            .then(|| "unfinished build of an older simvm".into()),
        EntryKind::Note => {
            let unused = unused_for(path, now);
            rules
                .unused_for
                .is_some_and(|limit| unused >= limit)
                .then(|| format!("note unused for {}", describe_age(unused)))
        }
    }
}

fn why_remove_template(dir: &Path, rules: &PruneRules, now: SystemTime) -> Option<String> {
    let state = dir.join(STATE_FILE);
    let made_by = match read_state(&state).and_then(|text| MadeBy::read(&text)) {
        Ok(made_by) => made_by,
        Err(e) => return Some(format!("no usable {STATE_FILE}: {e}")),
    };
    let unused = unused_for(&state, now);
    if !made_by.is_this_simvm() {
        return (unused >= rules.other_builds_unused_for).then(|| {
            format!(
                "made by simvm {} (template format {})",
                made_by.simvm, made_by.format
            )
        });
    }
    rules
        .unused_for
        .is_some_and(|limit| unused >= limit)
        .then(|| format!("unused for {}", describe_age(unused)))
}

/// How long ago `path` was last used (modified); zero if that is unknown or in the future.
fn unused_for(path: &Path, now: SystemTime) -> Duration {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|used| now.duration_since(used).ok())
        .unwrap_or_default()
}

/// `age` in the largest unit that keeps it readable: "40 s", "12 min", "5 h", "31 days".
fn describe_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..120 => format!("{secs} s"),
        120..7_200 => format!("{} min", secs / 60),
        7_200..172_800 => format!("{} h", secs / 3_600),
        _ => format!("{} days", secs / 86_400),
    }
}

fn remove(entry: &Entry, why: String, report: &mut PruneReport) {
    let path = &entry.path;
    let bytes = disk_usage(path);
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => report.removed.push(Removed {
            path: path.clone(),
            kind: entry.kind,
            why,
            bytes,
        }),
        // Gone meanwhile (by hand, or an older simvm's build that finished): nothing freed here.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report.failed.push((path.clone(), e.to_string())),
    }
}

/// The disk space `path` holds, like `du`: allocated blocks, not lengths (memory files are
/// sparse). Symbolic links are not followed.
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let Ok(listing) = std::fs::read_dir(path) else {
        return own;
    };
    own + listing
        .flatten()
        .map(|item| disk_usage(&item.path()))
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::super::{mark_used, note_path, SIMVM_BUILD, TEMPLATE_FORMAT};
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const HOUR: Duration = Duration::from_secs(3_600);

    /// What `simvm image prune` does without options.
    const ONLY_UNUSABLE: PruneRules = PruneRules {
        other_builds_unused_for: Duration::ZERO,
        unused_for: None,
    };

    fn scratch_cache(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("simvm-prune-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("templates")).unwrap();
        dir
    }

    fn key(c: char) -> String {
        c.to_string().repeat(32)
    }

    fn set_last_use(path: &Path, ago: Duration) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - ago).unwrap();
    }

    /// `templates/KEY/` with a `template.json` of this simvm and format, last used `ago`, and
    /// a memory file of 64 KiB of data.
    fn template(cache: &Path, key: &str, simvm: &str, format: u32, ago: Duration) -> PathBuf {
        let dir = cache.join("templates").join(key);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory"), vec![0x5a; 64 << 10]).unwrap();
        let state = dir.join(STATE_FILE);
        let json = format!(r#"{{"format":{format},"simvm":"{simvm}","key":"{key}"}}"#);
        std::fs::write(&state, json).unwrap();
        set_last_use(&state, ago);
        dir
    }

    fn current(cache: &Path, key: &str, ago: Duration) -> PathBuf {
        template(cache, key, SIMVM_BUILD, TEMPLATE_FORMAT, ago)
    }

    fn note(cache: &Path, key: &str, ago: Duration) -> PathBuf {
        let path = note_path(&cache.join("templates"), key);
        std::fs::write(&path, "the guest halted").unwrap();
        set_last_use(&path, ago);
        path
    }

    /// The names left in `templates/`, sorted.
    fn left(cache: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(cache.join("templates"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn lock(cache: &Path, key: &str) -> FileLock {
        FileLock::exclusive(&lock_path(&cache.join("templates"), key)).unwrap()
    }

    #[test]
    fn other_builds_damaged_and_unfinished_entries_go_and_busy_keys_stay() {
        let cache = scratch_cache("unusable");
        let templates = cache.join("templates");
        let (a, b, c, d, e, f) = (key('a'), key('b'), key('c'), key('d'), key('e'), key('f'));
        current(&cache, &a, 400 * DAY);
        note(&cache, &a, 400 * DAY);
        std::fs::write(lock_path(&templates, &a), "").unwrap();
        let other_build = template(&cache, &b, "0.0.1+0000", TEMPLATE_FORMAT, Duration::ZERO);
        template(&cache, &c, SIMVM_BUILD, TEMPLATE_FORMAT + 1, Duration::ZERO);
        std::fs::create_dir(templates.join(&d)).unwrap();
        std::fs::create_dir(templates.join(&e)).unwrap();
        std::fs::write(templates.join(&e).join(STATE_FILE), r#"{"format": 1"#).unwrap();
        // Unfinished builds: of a free key, of a key being built now, of an older simvm.
        std::fs::create_dir(templates.join(format!(".build.{a}.123"))).unwrap();
        std::fs::create_dir(templates.join(format!(".build.{f}.456"))).unwrap();
        std::fs::create_dir(templates.join(".build.789")).unwrap();
        // Another simvm is loading this other build's template.
        let busy_build = template(&cache, &key('9'), "0.0.1+0000", 1, Duration::ZERO);
        std::fs::write(templates.join("notes.txt"), "mine").unwrap();
        let held = [lock(&cache, &f), lock(&cache, &key('9'))];
        let other_build_bytes = disk_usage(&other_build);

        let report = prune(&cache, ONLY_UNUSABLE).unwrap();
        drop(held);

        // Lock files stay, those taken to remove a key's entries among them.
        let locks = [&a, &b, &c, &d, &e, &f, &key('9')].map(|k| format!("{k}.lock"));
        let mut expected = vec![
            format!(".build.{f}.456"),
            a.clone(),
            format!("{a}.unavailable"),
            key('9'),
            "notes.txt".to_string(),
        ];
        expected.extend(locks);
        expected.sort();
        assert_eq!(left(&cache), expected);
        assert_eq!(report.busy, vec![key('9'), f.clone()]);
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.count(EntryKind::Template), 4);
        assert_eq!(report.count(EntryKind::UnfinishedBuild), 2);
        assert_eq!(report.count(EntryKind::Note), 0);
        let removed_other_build = report
            .removed
            .iter()
            .find(|r| r.path == other_build)
            .expect("the other build's template is reported");
        assert_eq!(
            removed_other_build.why,
            "made by simvm 0.0.1+0000 (template format 1)"
        );
        assert!(other_build_bytes >= 64 << 10, "{other_build_bytes}");
        assert_eq!(removed_other_build.bytes, other_build_bytes);
        assert!(report.bytes() >= 2 * other_build_bytes, "{report:?}");
        let why = |k: &str| {
            let path = templates.join(k);
            let removed = report.removed.iter().find(|r| r.path == path);
            removed.map(|r| r.why.clone()).unwrap_or_default()
        };
        assert!(why(&d).starts_with("no usable template.json: cannot open"));
        assert!(why(&e).contains("not a simvm template"), "{}", why(&e));
        assert!(busy_build.exists());
        let _ = std::fs::remove_dir_all(cache);
    }

    #[test]
    fn templates_and_notes_unused_for_longer_than_asked_go() {
        let cache = scratch_cache("unused");
        current(&cache, &key('a'), 8 * DAY);
        current(&cache, &key('b'), 6 * DAY);
        note(&cache, &key('c'), 8 * DAY);
        note(&cache, &key('d'), HOUR);
        let rules = PruneRules {
            unused_for: Some(7 * DAY),
            ..ONLY_UNUSABLE
        };

        let report = prune(&cache, rules).unwrap();

        let notes: Vec<&Removed> = report
            .removed
            .iter()
            .filter(|r| r.kind == EntryKind::Note)
            .collect();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].why, "note unused for 8 days");
        assert_eq!(report.removed[0].why, "unused for 8 days");
        let locks = [format!("{}.lock", key('a')), format!("{}.lock", key('c'))];
        let mut expected = vec![key('b'), format!("{}.unavailable", key('d'))];
        expected.extend(locks);
        expected.sort();
        assert_eq!(left(&cache), expected);

        // With no time at all, only what is in use stays.
        let _held = lock(&cache, &key('d'));
        let every = PruneRules {
            unused_for: Some(Duration::ZERO),
            ..ONLY_UNUSABLE
        };
        let report = prune(&cache, every).unwrap();
        assert_eq!(report.count(EntryKind::Template), 1);
        assert_eq!(report.busy, vec![key('d')]);
        assert!(!cache.join("templates").join(key('b')).exists());
        let _ = std::fs::remove_dir_all(cache);
    }

    #[test]
    fn automatic_pruning_spares_recent_templates_of_other_builds() {
        let cache = scratch_cache("automatic");
        let other = |k: char, ago| template(&cache, &key(k), "0.0.1+0000", 1, ago);
        other('a', Duration::from_secs(600));
        other('b', 2 * HOUR);
        current(&cache, &key('c'), 29 * DAY);
        current(&cache, &key('d'), 31 * DAY);
        // An older simvm may be writing into it right now.
        std::fs::create_dir(cache.join("templates/.build.42")).unwrap();

        let report = prune(&cache, PruneRules::AUTOMATIC).unwrap();

        let mut expected = vec![
            ".build.42".to_string(),
            key('a'),
            format!("{}.lock", key('b')),
            key('c'),
            format!("{}.lock", key('d')),
        ];
        expected.sort();
        assert_eq!(left(&cache), expected);
        let why: Vec<&str> = report.removed.iter().map(|r| r.why.as_str()).collect();
        assert_eq!(
            why,
            [
                "made by simvm 0.0.1+0000 (template format 1)",
                "unused for 31 days"
            ]
        );
        let _ = std::fs::remove_dir_all(cache);
    }

    #[test]
    fn a_use_is_recorded_on_the_file() {
        let cache = scratch_cache("use");
        let dir = current(&cache, &key('a'), 40 * DAY);
        let state = dir.join(STATE_FILE);
        mark_used(&state);
        assert!(unused_for(&state, SystemTime::now()) < HOUR);
        // A file that cannot be written is no error.
        mark_used(&dir.join("missing"));
        let _ = std::fs::remove_dir_all(cache);
    }

    #[test]
    fn a_cache_without_templates_is_empty_and_an_unreadable_one_an_error() {
        let cache = scratch_cache("missing");
        std::fs::remove_dir(cache.join("templates")).unwrap();
        let report = prune(&cache, PruneRules::AUTOMATIC).unwrap();
        assert!(report.removed.is_empty() && report.busy.is_empty());

        std::fs::write(cache.join("templates"), "not a directory").unwrap();
        let error = prune(&cache, PruneRules::AUTOMATIC)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("templates: cannot list the cached templates"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(cache);
    }

    #[test]
    fn entries_are_known_by_their_names() {
        let a = key('a');
        let build = format!(".build.{a}.12");
        assert_eq!(classify(&a), Some((Some(a.as_str()), EntryKind::Template)));
        let as_build = Some((Some(a.as_str()), EntryKind::UnfinishedBuild));
        assert_eq!(classify(&build), as_build);
        assert_eq!(
            classify(".build.12"),
            Some((None, EntryKind::UnfinishedBuild))
        );
        let as_note = Some((Some(a.as_str()), EntryKind::Note));
        assert_eq!(classify(&format!("{a}.unavailable")), as_note);
        for other in [
            format!("{a}.lock"),
            "notes.txt".into(),
            ".build.x.12".into(),
            ".build.".into(),
            "".into(),
        ] {
            assert_eq!(classify(&other), None, "{other}");
        }
    }
}
