//! The CLI's standard output. A reader that stops early (`| head`,
//! `| grep -q`) is not a failure of the command: where `println!` would
//! panic on the broken pipe, the command ends quietly with success, so a
//! script under `set -o pipefail` sees only its reader's verdict.

use std::io::{self, Write};
use std::process;

/// Writes to standard output; a closed reader ends the process with success.
pub(super) fn write(text: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = io::stdout().lock();
    let written = out.write_fmt(text).and_then(|()| {
        if newline {
            out.write_all(b"\n")
        } else {
            out.flush()
        }
    });
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => process::exit(0),
        Err(error) => {
            eprintln!("crmsync: cannot write to standard output: {error}");
            process::exit(1);
        }
    }
}

/// `println!` for the CLI: see the module documentation.
macro_rules! say {
    () => {
        $crate::cli::output::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!($($arg)*), true)
    };
}

/// `print!` for the CLI (progress lines redrawn in place).
macro_rules! say_inline {
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!($($arg)*), false)
    };
}
