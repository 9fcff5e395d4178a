//! Reading a small regular file that an operator or a platform names (a CA bundle, a federated
//! token, a template's source): opened without blocking, so a FIFO or a device put in its place
//! is refused at once instead of holding the start up past any deadline; judged on the open
//! file (no window between a check and the open); read with a bound, so a huge file costs no
//! more than the bound. One reader for every such file, each caller wording its own message.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// Why a file could not be read; shown after the caller's "cannot read X:".
#[derive(Debug)]
pub enum Unreadable {
    /// The open failed (its error tells EMFILE apart: exit 9).
    Open(std::io::Error),
    /// A stat or a read of the open file failed.
    Io(std::io::Error),
    NotRegular,
    /// Larger than the bound (in bytes).
    TooLarge(u64),
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::Open(e) | Unreadable::Io(e) => write!(f, "{e}"),
            Unreadable::NotRegular => f.write_str("it is not a regular file"),
            Unreadable::TooLarge(max) if max % (1 << 20) == 0 => {
                write!(f, "it is larger than {} MiB", max >> 20)
            }
            Unreadable::TooLarge(max) if max % (1 << 10) == 0 => {
                write!(f, "it is larger than {} KiB", max >> 10)
            }
            Unreadable::TooLarge(max) => write!(f, "it is larger than {max} bytes"),
        }
    }
}

/// `path` opened for reading with `O_NONBLOCK`: opening a FIFO does not wait for a writer.
/// Symlinks are followed (a kubelet's projected volume is made of them).
pub fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// The bytes of the regular file at `path`, at most `max` of them.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, Unreadable> {
    let file = open_nonblocking(path).map_err(Unreadable::Open)?;
    if !file.metadata().map_err(Unreadable::Io)?.is_file() {
        return Err(Unreadable::NotRegular);
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(Unreadable::Io)?;
    if bytes.len() as u64 > max {
        return Err(Unreadable::TooLarge(max));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kvfetch-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_up_to_the_bound_and_refuses_one_byte_more() {
        let dir = scratch("bound");
        let f = dir.join("f");
        std::fs::write(&f, vec![b'a'; 1024]).unwrap();
        assert_eq!(read_regular(&f, 1024).unwrap().len(), 1024);
        let e = read_regular(&f, 1023).unwrap_err();
        assert!(matches!(e, Unreadable::TooLarge(1023)), "{e:?}");
        assert_eq!(e.to_string(), "it is larger than 1023 bytes");
        assert_eq!(
            Unreadable::TooLarge(1 << 20).to_string(),
            "it is larger than 1 MiB"
        );
        assert_eq!(
            Unreadable::TooLarge(64 << 10).to_string(),
            "it is larger than 64 KiB"
        );
        std::fs::write(&f, b"").unwrap();
        assert_eq!(read_regular(&f, 0).unwrap(), b"");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_a_directory_and_a_missing_file_are_refused_at_once() {
        let dir = scratch("kinds");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer ever comes: a blocking open would never return.
        assert!(matches!(
            read_regular(&fifo, 10),
            Err(Unreadable::NotRegular)
        ));
        assert!(matches!(
            read_regular(&dir, 10),
            Err(Unreadable::NotRegular)
        ));
        let e = read_regular(&dir.join("missing"), 10).unwrap_err();
        assert!(
            matches!(&e, Unreadable::Open(io) if io.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
        std::os::unix::fs::symlink(dir.join("target"), dir.join("link")).unwrap();
        std::fs::write(dir.join("target"), b"x").unwrap();
        assert_eq!(read_regular(&dir.join("link"), 10).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
