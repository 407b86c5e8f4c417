//! The one way jotd's binaries read a file an operator names (config, key files,
//! JWKS files, denylists, certificates): regular files only, and a size cap.
//!
//! It lives here, not in jotd-core (which never touches files), because every
//! binary (jotd, jotd-gateway, jotd-load) depends on this crate. Nothing in the
//! libraries calls it on its own: the binaries read and pass bytes in.
//!
//! `std::fs::read` on a FIFO blocks until a writer comes (a daemon that never
//! starts, or a reload that never ends); on `/dev/zero` or a huge file it reads
//! until memory runs out. Both are operator mistakes that deserve an error naming
//! the file, not a hang.

use std::io::{self, Read};
use std::path::Path;

/// The largest file read: 256 MiB. A config of 100k tenants is a few tens of MiB;
/// anything larger is a mistake (a log file, an image), not configuration.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Reads a whole regular file (symlinks followed) of at most [`MAX_FILE_BYTES`].
///
/// # Errors
/// The file cannot be opened or read, is not a regular file (a FIFO, a device, a
/// directory, a socket: `InvalidInput`, saying which), or is larger than the cap
/// (`InvalidData`).
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    read_file_capped(path, MAX_FILE_BYTES)
}

/// [`read_file`] for a text file: the bytes must be UTF-8.
///
/// # Errors
/// As [`read_file`], and `InvalidData` naming the first byte that is not UTF-8.
pub fn read_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_file(path)?).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text (at byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// [`read_file`] with a cap of the caller's.
///
/// # Errors
/// As [`read_file`].
pub fn read_file_capped(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    // Checked before opening: opening a FIFO for reading blocks until a writer comes.
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", describe(kind)),
        ));
    }
    let file = std::fs::File::open(path)?;
    // Checked again on the open file: the path may have been swapped in between.
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", describe(meta.file_type())),
        ));
    }
    let too_big = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the {max}-byte limit on files jotd reads"),
        )
    };
    if meta.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow while it is read: never past the cap.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    Ok(bytes)
}

fn describe(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_and_everything_else_is_named() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        let file = dir.join("a.txt");
        std::fs::write(&file, b"hello").unwrap();
        assert_eq!(read_file(&file).unwrap(), b"hello");
        let e = read_file_capped(&file, 4).unwrap_err();
        assert!(
            e.to_string().contains("larger than the 4-byte limit"),
            "{e}"
        );
        assert_eq!(read_file_capped(&file, 5).unwrap(), b"hello");
        assert_eq!(read_text(&file).unwrap(), "hello");
        let binary = dir.join("b.bin");
        std::fs::write(&binary, b"ok\xff").unwrap();
        let e = read_text(&binary).unwrap_err();
        assert!(e.to_string().contains("not UTF-8 text (at byte 2)"), "{e}");
        let e = read_file(&dir).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        #[cfg(unix)]
        {
            let e = read_file(Path::new("/dev/zero")).unwrap_err();
            assert!(e.to_string().contains("a character device"), "{e}");
            // A FIFO with no writer: an error at once, not a blocked open.
            let fifo = dir.join("fifo");
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|s| s.success());
            if made {
                let e = read_file(&fifo).unwrap_err();
                assert!(e.to_string().contains("a FIFO"), "{e}");
            }
        }
    }
}
