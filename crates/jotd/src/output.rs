//! Standard output of the commands that print (`config check`, `check`,
//! `key fingerprint`, `speed`).
//!
//! A reader that goes away early (`jotd config check --config X | head -1`) is
//! not an error. Rust ignores SIGPIPE, so the write that finds the pipe closed
//! fails with `BrokenPipe`; [`Output`] notes it, the command returns that error
//! through its `?`, and `main` sees [`Output::reader_gone`] and exits 0
//! without a message. Every other write error names standard output and is
//! reported. (`println!` would panic instead; the commands never use it.)

use std::io::{self, Write};

/// Standard output, unbuffered beyond what `std` does (line-buffered), that
/// remembers whether its reader went away.
#[derive(Debug)]
pub(crate) struct Output {
    stdout: io::Stdout,
    reader_gone: bool,
}

impl Output {
    /// This process's standard output. Not locked: each write takes the lock,
    /// so the daemon's threads never wait on a command holding it.
    pub(crate) fn stdout() -> Self {
        Self {
            stdout: io::stdout(),
            reader_gone: false,
        }
    }

    /// Whether a write found the reader gone (a broken pipe).
    pub(crate) const fn reader_gone(&self) -> bool {
        self.reader_gone
    }

    fn note<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        result.map_err(|e| match e.kind() {
            // `write_all` retries these: no message to build.
            io::ErrorKind::Interrupted => e,
            kind => {
                self.reader_gone |= kind == io::ErrorKind::BrokenPipe;
                io::Error::new(kind, format!("cannot write to standard output: {e}"))
            }
        })
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.stdout.write(buf);
        self.note(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.stdout.flush();
        self.note(result)
    }
}
