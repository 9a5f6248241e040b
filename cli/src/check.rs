//! `simvm check`: is a recorded history linearizable? (The checker is `simvm-checker`.)

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use simvm_checker::{check, History, Limits, Model, Verdict};

#[derive(Args)]
pub struct CheckArgs {
    /// The history: JSON lines of invoke / ok / fail / info events (docs/etcd.md "Histories").
    history: PathBuf,
    /// The model the operations are checked against.
    #[arg(long, default_value = "register")]
    model: Model,
    /// Also write a timeline of the history, with the violation marked, to this HTML file.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Give up with "unknown" after this much real time (e.g. 30s).
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    timeout: Duration,
    /// Give up with "unknown" once one key's search holds this many configurations.
    #[arg(long, default_value_t = Limits::default().max_states)]
    max_states: usize,
}

/// Exit status: 0 linearizable, 1 not, 3 unknown (the search hit a limit); errors are 2.
pub fn run(args: CheckArgs) -> Result<i32, String> {
    let file = std::fs::File::open(&args.history)
        .map_err(|e| format!("cannot read {}: {e}", args.history.display()))?;
    let history = History::read_jsonl(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", args.history.display()))?;
    // As a run's `[check]` says NO-HISTORY: nothing recorded proves nothing.
    if history.is_empty() {
        return Err(format!(
            "{}: the history is empty: it records no operation",
            args.history.display()
        ));
    }
    let limits = Limits {
        max_states: args.max_states,
        time_budget: Some(args.timeout),
        ..Limits::default()
    };
    let report = check(&history, args.model, limits);
    print!("{}", report.to_text());
    if let Some(path) = &args.html {
        report
            .write_html(path, &[])
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("simvm: timeline written to {}", path.display());
    }
    Ok(match report.verdict() {
        Verdict::Linearizable => 0,
        Verdict::NotLinearizable(_) => 1,
        Verdict::Unknown(_) => 3,
    })
}
