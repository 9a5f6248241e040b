//! A minimal writer for `newc` cpio archives, the format the kernel unpacks into its initramfs.
//! simvm uses it for the small per-machine archive appended to the base image.

/// An in-memory `newc` archive. Every entry has a fixed owner and mtime, so the bytes depend
/// only on the names and contents given.
#[derive(Debug, Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

impl CpioWriter {
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    /// Adds a directory (its parent must already exist in the image or this archive).
    pub fn dir(&mut self, path: &str, perm: u32) -> &mut Self {
        self.entry(path, S_IFDIR | perm, 2, &[]);
        self
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> &mut Self {
        self.entry(path, S_IFREG | perm, 1, data);
        self
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, &[]);
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) {
        let name = path.trim_start_matches('/');
        let ino = if mode == 0 { 0 } else { self.next_ino };
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_terminated() {
        let mut w = CpioWriter::new();
        w.dir("/simvm", 0o755).file("/simvm/argv", 0o644, b"sh\0");
        let bytes = w.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("simvm/argv\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // Header of the file entry: filesize 3, namesize 11.
        let at = text.find("simvm/argv").unwrap();
        let header = &text[at - 110..at];
        assert_eq!(&header[54..62], "00000003");
        assert_eq!(&header[94..102], "0000000b");
    }

    #[test]
    fn cpio_tool_reads_it_back_when_present() {
        let Ok(status) = std::process::Command::new("cpio").arg("--version").output() else {
            return; // cpio(1) is optional on a development machine; the layout test above stands.
        };
        assert!(status.status.success());
        let mut w = CpioWriter::new();
        w.dir("/simvm", 0o755)
            .file("/simvm/machine", 0o644, b"name=m1\n");
        let bytes = w.finish();
        let mut child = std::process::Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "simvm\nsimvm/machine\n"
        );
    }
}
