//! Writing to stdout and stderr without panicking when they are gone.
//!
//! `println!` and `eprintln!` panic when the write fails — typically
//! `EPIPE`, when the reader of a pipe (`| tee`, `| head`, `| true`) has
//! exited; Ctrl-C at a terminal kills that reader together with us. Rust
//! ignores `SIGPIPE`, so such a write fails with an error instead of
//! killing the process; this module drops that error. A command that is
//! cleaning up (removing namespaces, stopping processes) must go on doing
//! so when nobody can read its messages any more.
//!
//! - [`out!`](crate::out) / [`outln!`](crate::outln): to stdout, errors
//!   dropped.
//! - [`errln!`](crate::errln): to stderr, errors dropped.
//! - [`write_out`]: to stdout, reporting the error, for commands whose
//!   output is their whole job (`--help`, a listing) and that stop at the
//!   first failed write.
//! - [`Lossy`]: an [`io::Write`] that reports success for whatever its
//!   inner writer fails to take (tracing's log writer, see
//!   [`lossy_stderr`]).

use std::fmt;
use std::io::{self, Write};

/// Writes `args` to stdout (locked, then flushed); the write's error, if
/// any (`EPIPE` when the reader is gone).
pub fn write_out(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.flush()
}

/// Writes `args` to stderr; the write's error, if any.
pub fn write_err(args: fmt::Arguments<'_>) -> io::Result<()> {
    io::stderr().lock().write_fmt(args)
}

/// Whether `e` says the reader of our pipe is gone.
pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// Like `print!`, but a closed or failing stdout is ignored.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = $crate::stdio::write_out(::std::format_args!($($arg)*));
    }};
}

/// Like `println!`, but a closed or failing stdout is ignored.
#[macro_export]
macro_rules! outln {
    () => { $crate::out!("\n") };
    ($($arg:tt)*) => {{
        let _ = $crate::stdio::write_out(::std::format_args!("{}\n", ::std::format_args!($($arg)*)));
    }};
}

/// Like `eprintln!`, but a closed or failing stderr is ignored.
#[macro_export]
macro_rules! errln {
    () => {{
        let _ = $crate::stdio::write_err(::std::format_args!("\n"));
    }};
    ($($arg:tt)*) => {{
        let _ = $crate::stdio::write_err(::std::format_args!("{}\n", ::std::format_args!($($arg)*)));
    }};
}

/// A writer that never fails: what its inner writer cannot take (a closed
/// pipe, a full disk) is dropped, so a logger never reports — or panics
/// over — a log line nobody can read.
#[derive(Debug)]
pub struct Lossy<W>(pub W);

impl<W: Write> Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(_) => Ok(buf.len()),
            ok => ok,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Stderr behind [`Lossy`]: tracing's writer (`with_writer(lossy_stderr)`).
pub fn lossy_stderr() -> Lossy<io::Stderr> {
    Lossy(io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn lossy_swallows_a_broken_pipe() {
        let mut w = Lossy(Closed);
        assert!(writeln!(w, "nobody reads this").is_ok());
        assert!(w.flush().is_ok());
        let mut v = Lossy(Vec::new());
        write!(v, "kept").unwrap();
        assert_eq!(v.0, b"kept");
    }

    #[test]
    fn broken_pipe_is_recognised() {
        assert!(is_broken_pipe(&io::Error::from(io::ErrorKind::BrokenPipe)));
        assert!(!is_broken_pipe(&io::Error::from(io::ErrorKind::NotFound)));
    }
}
