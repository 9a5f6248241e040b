//! The per-machine boot archive: who the machine is and what it runs (`docs/guest-abi.md`,
//! "Per-machine boot data"). Kept out of the base image so one image serves every machine.

use simvm_devices::abi::identity;

use crate::cpio::CpioWriter;
use crate::error::{Error, Result};

/// What one machine is told at boot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootData {
    pub name: String,
    /// 1-based.
    pub index: usize,
    pub machines: usize,
    pub seed: u64,
    /// 1 for the first boot, then one more for each restart (`SIMVM_INCARNATION`).
    pub incarnation: u32,
    /// `10.0.0.N/24`, when the machine has a network interface.
    pub ip: Option<String>,
    pub mac: Option<String>,
    /// The command; empty runs `/bin/sh`.
    pub argv: Vec<String>,
    pub environ: Vec<(String, String)>,
    /// `(name, address)` of every machine, for `/etc/hosts`.
    pub hosts: Vec<(String, String)>,
    /// Filesystems init mounts before the command: device, mount point, type.
    pub mounts: Vec<Mount>,
}

/// A disk's filesystem that init mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `vda`, `vdb`, ...
    pub device: String,
    /// An absolute path.
    pub path: String,
    /// `ext4`.
    pub fstype: String,
}

impl BootData {
    /// The archive to append after the base initramfs.
    pub fn archive(&self) -> Vec<u8> {
        let mut machine = format!(
            "name={}\nindex={}\nmachines={}\nseed={}\nincarnation={}\n",
            self.name,
            self.index,
            self.machines,
            self.seed,
            self.incarnation.max(1)
        );
        if let Some(ip) = &self.ip {
            machine.push_str(&format!("ip={ip}\n"));
        }
        if let Some(mac) = &self.mac {
            machine.push_str(&format!("mac={mac}\n"));
        }
        let nul_list = |items: &mut dyn Iterator<Item = String>| {
            items.fold(Vec::new(), |mut out, item| {
                out.extend_from_slice(item.as_bytes());
                out.push(0);
                out
            })
        };
        let mut hosts = String::from("127.0.0.1\tlocalhost\n");
        for (name, addr) in &self.hosts {
            hosts.push_str(&format!("{addr}\t{name}\n"));
        }

        let mut w = CpioWriter::new();
        w.dir("/simvm", 0o755)
            .file("/simvm/machine", 0o644, machine.as_bytes());
        if !self.argv.is_empty() {
            w.file(
                "/simvm/argv",
                0o644,
                &nul_list(&mut self.argv.iter().cloned()),
            );
        }
        if !self.environ.is_empty() {
            let env = nul_list(&mut self.environ.iter().map(|(k, v)| format!("{k}={v}")));
            w.file("/simvm/environ", 0o644, &env);
        }
        if !self.mounts.is_empty() {
            let lines: String = self
                .mounts
                .iter()
                .map(|m| format!("{} {} {}\n", m.device, m.path, m.fstype))
                .collect();
            w.file("/simvm/disks", 0o644, lines.as_bytes());
        }
        w.dir("/etc", 0o755)
            .file(
                "/etc/hostname",
                0o644,
                format!("{}\n", self.name).as_bytes(),
            )
            .file("/etc/hosts", 0o644, hosts.as_bytes());
        w.finish()
    }
}

/// Refuses boot data too big for the guest's identity buffer.
pub fn check_size(boot: &BootData) -> Result<()> {
    let len = boot.archive().len() as u64;
    if len > identity::MAX_ARCHIVE {
        return Err(Error::Devices(format!(
            "machine {}: its boot data (command, environment, hosts, mounts) takes {len} bytes; \
             at most {} fit",
            boot.name,
            identity::MAX_ARCHIVE
        )));
    }
    Ok(())
}

/// What the VMM writes into the guest's identity buffer (docs/guest-abi.md, "Identity"):
/// the header with the archive's length and the RNG seed, then the archive.
pub fn identity_buffer(boot: &BootData, rng_seed: &[u8; 32]) -> Vec<u8> {
    let archive = boot.archive();
    let header = identity::HEADER_SIZE as usize;
    let mut out = vec![0u8; header];
    out[..4].copy_from_slice(&identity::MAGIC.to_le_bytes());
    // `check_size` bounds the archive far below u32::MAX.
    let len = u32::try_from(archive.len()).unwrap_or(u32::MAX);
    let at = identity::LENGTH as usize;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    let at = identity::SEED as usize;
    out[at..at + 32].copy_from_slice(rng_seed);
    out.extend_from_slice(&archive);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_carries_argv_nul_separated_and_is_reproducible() {
        let data = BootData {
            name: "m2".into(),
            index: 2,
            machines: 3,
            seed: 5,
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            ..Default::default()
        };
        let a = data.archive();
        assert_eq!(a, data.archive());
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("sh\0-c\0echo hi\0"));
        assert!(text.contains("name=m2\nindex=2\nmachines=3\nseed=5\nincarnation=1\n"));
        assert!(!text.contains("simvm/environ"));
        assert!(!text.contains("simvm/disks"));
        let mounted = BootData {
            incarnation: 3,
            mounts: vec![Mount {
                device: "vda".into(),
                path: "/data".into(),
                fstype: "ext4".into(),
            }],
            ..data
        };
        let text = String::from_utf8_lossy(&mounted.archive()).into_owned();
        assert!(text.contains("incarnation=3\n"));
        assert!(text.contains("simvm/disks"));
        assert!(text.contains("vda /data ext4\n"));
    }

    #[test]
    fn identity_buffer_has_magic_length_seed_then_archive() {
        let data = BootData {
            name: "m1".into(),
            ..Default::default()
        };
        let buffer = identity_buffer(&data, &[7; 32]);
        let archive = data.archive();
        assert_eq!(&buffer[..4], b"SID1");
        assert_eq!(
            u32::from_le_bytes(buffer[4..8].try_into().unwrap()) as usize,
            archive.len()
        );
        assert_eq!(&buffer[8..40], &[7; 32]);
        assert_eq!(&buffer[40..64], &[0; 24]);
        assert_eq!(&buffer[64..], &archive[..]);
        check_size(&data).unwrap();
        let huge = BootData {
            environ: vec![("BIG".into(), "x".repeat(70_000))],
            ..data
        };
        assert!(matches!(check_size(&huge), Err(Error::Devices(m)) if m.contains("at most 65472")));
    }
}
