//! `imgspec lock SPEC…`: the command line of [`crate::build::resolve`] (which resolves every
//! package set and writes `SPEC.lock`): its arguments and what it prints.

use std::path::{Path, PathBuf};

use super::{need_specs, reporter, CliError};
use crate::build::resolve::{lock_spec, Update};
use crate::build::RunOptions;

/// `imgspec lock SPEC…`.
pub(super) fn lock(
    cache_dir: &Path,
    specs: &[PathBuf],
    update: Update,
    jobs: usize,
    json: bool,
) -> Result<(), CliError> {
    need_specs(specs)?;
    let cancel = super::interrupt_flag();
    let rep = reporter(json);
    let tiers = imgspec_cache::Tiers::none();
    let o = RunOptions {
        jobs,
        reporter: rep.as_ref(),
        cancel: &cancel,
        fresh: &[],
        tiers: &tiers,
    };
    let feedback = super::progress::Feedback { json };
    for s in specs {
        let w = lock_spec(cache_dir, s, &update, &o, &feedback)?;
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "event": "lock-written",
                    "path": w.path,
                    "changed": w.changed,
                    "sets": w.sets,
                    "packages": w.packages,
                    "files": w.files,
                    "resolved": w.resolved,
                    "seconds": w.seconds,
                })
            );
        } else {
            eprintln!(
                "{} `{}`: {} sets, {} packages ({} sets resolved, {} kept) in {:.2}s",
                if w.changed { "wrote" } else { "up to date:" },
                w.path.display(),
                w.sets,
                w.packages,
                w.resolved,
                w.sets - w.resolved,
                w.seconds
            );
        }
    }
    Ok(())
}
