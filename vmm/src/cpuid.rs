//! The guest's CPU model: one fixed template, whatever the host is.
//!
//! The guest sees the same vendor, family, model, brand and feature set on every host that has
//! the baseline features. Features the determinism contract forbids (TSC, TSC-deadline, RDRAND,
//! RDSEED, RDTSCP, x2APIC, invariant TSC, KVM paravirtual leaves) and features simvm's guest does
//! not need (XSAVE/AVX, the local APIC, machine checks, speculation-control MSRs whose values
//! come from the host) are simply absent from the template.
//!
//! On a PVM host the guest's `CPUID` returns the host's values whatever this table says, so the
//! guest kernel's command line also clears the forbidden features (see `docs/determinism.md`).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::error::{Error, Result};

/// A feature bit: leaf, subleaf, register and bit, with a name for error messages.
#[derive(Clone, Copy, Debug)]
struct Feature {
    name: &'static str,
    leaf: u32,
    reg: Reg,
    bit: u8,
    /// Required features must be present on the host; optional ones are offered if present.
    required: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Ebx,
    Ecx,
    Edx,
}

const fn req(name: &'static str, leaf: u32, reg: Reg, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        reg,
        bit,
        required: true,
    }
}

const fn opt(name: &'static str, leaf: u32, reg: Reg, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        reg,
        bit,
        required: false,
    }
}

/// The template's features. Every other bit is zero.
const FEATURES: &[Feature] = &[
    // Leaf 1 EDX: the x86-64 baseline, without TSC, APIC, MCE/MCA and HTT.
    req("fpu", 1, Reg::Edx, 0),
    req("pse", 1, Reg::Edx, 3),
    req("msr", 1, Reg::Edx, 5),
    req("pae", 1, Reg::Edx, 6),
    req("cx8", 1, Reg::Edx, 8),
    req("sep", 1, Reg::Edx, 11),
    req("pge", 1, Reg::Edx, 13),
    req("cmov", 1, Reg::Edx, 15),
    req("pat", 1, Reg::Edx, 16),
    req("clflush", 1, Reg::Edx, 19),
    req("mmx", 1, Reg::Edx, 23),
    req("fxsr", 1, Reg::Edx, 24),
    req("sse", 1, Reg::Edx, 25),
    req("sse2", 1, Reg::Edx, 26),
    // Leaf 1 ECX: x86-64-v2 plus a few harmless extensions; no x2APIC, TSC-deadline, XSAVE,
    // AVX, RDRAND. Optional because some KVM flavours (PVM) report a reduced supported set;
    // every current x86-64 server has them all, so the model is the same in practice.
    opt("sse3", 1, Reg::Ecx, 0),
    opt("ssse3", 1, Reg::Ecx, 9),
    opt("cx16", 1, Reg::Ecx, 13),
    opt("sse4_1", 1, Reg::Ecx, 19),
    opt("sse4_2", 1, Reg::Ecx, 20),
    opt("popcnt", 1, Reg::Ecx, 23),
    opt("pclmulqdq", 1, Reg::Ecx, 1),
    opt("movbe", 1, Reg::Ecx, 22),
    opt("aes", 1, Reg::Ecx, 25),
    // Leaf 7 EBX: no RDSEED, AVX2, AVX-512, TSX, SMAP.
    opt("fsgsbase", 7, Reg::Ebx, 0),
    opt("bmi1", 7, Reg::Ebx, 3),
    opt("smep", 7, Reg::Ebx, 7),
    opt("bmi2", 7, Reg::Ebx, 8),
    opt("adx", 7, Reg::Ebx, 19),
    opt("clflushopt", 7, Reg::Ebx, 23),
    opt("sha_ni", 7, Reg::Ebx, 29),
    // Extended leaf 0x8000_0001: long mode; no RDTSCP.
    opt("lahf_lm", 0x8000_0001, Reg::Ecx, 0),
    opt("abm", 0x8000_0001, Reg::Ecx, 5),
    opt("3dnowprefetch", 0x8000_0001, Reg::Ecx, 8),
    req("syscall", 0x8000_0001, Reg::Edx, 11),
    req("nx", 0x8000_0001, Reg::Edx, 20),
    opt("pdpe1gb", 0x8000_0001, Reg::Edx, 26),
    req("lm", 0x8000_0001, Reg::Edx, 29),
];

const VENDOR: &[u8; 12] = b"GenuineIntel";
const BRAND: &[u8; 48] = b"simvm deterministic virtual CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
/// Family 6, model 0x55, stepping 7: a generic server core; nothing keys errata off it here.
const SIGNATURE: u32 = 0x0005_0657;
const PHYS_ADDR_BITS: u32 = 39;
const HYPERVISOR: u32 = 1 << 31;
const VIRT_ADDR_BITS: u32 = 48;

/// A short hash of the CPU a guest sees (every leaf of the template, including what still
/// depends on the host: optional features, address widths). Runs on different templates are
/// not comparable, so the summary prints it beside the digest.
pub fn template_hash(cpuid: &CpuId) -> String {
    let mut hasher = blake3::Hasher::new();
    for e in cpuid.as_slice() {
        for word in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
            hasher.update(&word.to_le_bytes());
        }
    }
    hasher.finalize().to_hex()[..8].to_string()
}

/// Builds the guest's CPUID table from the template, checking the host offers every required
/// feature (`supported` is `KVM_GET_SUPPORTED_CPUID`).
pub fn guest_cpuid(supported: &CpuId) -> Result<CpuId> {
    let host = supported.as_slice();
    let host_reg = |leaf: u32, reg: Reg| -> u32 {
        host.iter()
            .find(|e| e.function == leaf && e.index == 0)
            .map(|e| match reg {
                Reg::Ebx => e.ebx,
                Reg::Ecx => e.ecx,
                Reg::Edx => e.edx,
            })
            .unwrap_or(0)
    };
    let regs = |leaf: u32, reg: Reg| -> Result<u32> {
        let mut value = 0u32;
        for f in FEATURES.iter().filter(|f| f.leaf == leaf && f.reg == reg) {
            let present = host_reg(leaf, reg) & (1 << f.bit) != 0;
            match (present, f.required) {
                (true, _) => value |= 1 << f.bit,
                (false, true) => return Err(Error::HostCpu(f.name.to_string())),
                (false, false) => {}
            }
        }
        Ok(value)
    };

    let vendor =
        |i: usize| u32::from_le_bytes(VENDOR[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]));
    let brand = |i: usize| u32::from_le_bytes(BRAND[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]));
    let host_phys = host
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map(|e| e.eax & 0xff)
        .unwrap_or(PHYS_ADDR_BITS);

    let entry = |function, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
        function,
        index: 0,
        flags: 0,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    let mut entries = vec![
        entry(0, 7, vendor(0), vendor(2), vendor(1)),
        // EBX: CLFLUSH line size 64 (8 * 8), one logical processor, APIC ID 0.
        // ECX bit 31: a hypervisor is present, whatever the host says; the guest kernel keys
        // workarounds for bare-metal errata off it.
        entry(
            1,
            SIGNATURE,
            8 << 8,
            regs(1, Reg::Ecx)? | HYPERVISOR,
            regs(1, Reg::Edx)?,
        ),
        kvm_cpuid_entry2 {
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..entry(7, 0, regs(7, Reg::Ebx)?, 0, 0)
        },
        entry(0x8000_0000, 0x8000_0008, 0, 0, 0),
        entry(
            0x8000_0001,
            0,
            0,
            regs(0x8000_0001, Reg::Ecx)?,
            regs(0x8000_0001, Reg::Edx)?,
        ),
        entry(
            0x8000_0008,
            VIRT_ADDR_BITS << 8 | PHYS_ADDR_BITS.min(host_phys),
            0,
            0,
            0,
        ),
    ];
    for (n, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        entries.push(entry(
            leaf,
            brand(n * 4),
            brand(n * 4 + 1),
            brand(n * 4 + 2),
            brand(n * 4 + 3),
        ));
    }
    CpuId::from_entries(&entries)
        .map_err(|_| Error::HostCpu("a CPUID table simvm can build".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_with_everything() -> CpuId {
        let all = |function| kvm_cpuid_entry2 {
            function,
            eax: 46,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        };
        CpuId::from_entries(&[all(0), all(1), all(7), all(0x8000_0001), all(0x8000_0008)]).unwrap()
    }

    fn find(cpuid: &CpuId, function: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function)
            .unwrap()
    }

    #[test]
    fn the_template_hash_changes_with_any_field_the_host_still_decides() {
        let guest = guest_cpuid(&host_with_everything()).unwrap();
        let hash = template_hash(&guest);
        assert_eq!(
            hash,
            template_hash(&guest_cpuid(&host_with_everything()).unwrap())
        );
        assert_eq!(hash.len(), 8);
        // A host without an optional feature (leaf 7 EBX) gives another template.
        let mut host = host_with_everything();
        for e in host.as_mut_slice() {
            if e.function == 7 {
                e.ebx = 0;
            }
        }
        let other = guest_cpuid(&host).unwrap();
        assert_ne!(find(&other, 7).ebx, find(&guest, 7).ebx);
        assert_ne!(template_hash(&other), hash);
    }

    #[test]
    fn forbidden_features_are_hidden_even_when_the_host_has_them() {
        let guest = guest_cpuid(&host_with_everything()).unwrap();
        let leaf1 = find(&guest, 1);
        assert_eq!(leaf1.edx & (1 << 4), 0, "TSC");
        assert_eq!(leaf1.edx & (1 << 9), 0, "APIC");
        assert_eq!(leaf1.ecx & (1 << 21), 0, "x2APIC");
        assert_eq!(leaf1.ecx & (1 << 24), 0, "TSC-deadline");
        assert_eq!(leaf1.ecx & (1 << 26), 0, "XSAVE");
        assert_eq!(leaf1.ecx & (1 << 30), 0, "RDRAND");
        assert_eq!(find(&guest, 7).ebx & (1 << 18), 0, "RDSEED");
        assert_eq!(find(&guest, 0x8000_0001).edx & (1 << 27), 0, "RDTSCP");
        assert!(
            guest.as_slice().iter().all(|e| e.function != 0x8000_0007),
            "invariant TSC"
        );
        assert!(guest
            .as_slice()
            .iter()
            .all(|e| !(0x4000_0000..0x5000_0000).contains(&e.function)));
        assert_eq!(leaf1.eax, SIGNATURE);
        assert_ne!(leaf1.ecx & HYPERVISOR, 0, "hypervisor bit");
    }

    #[test]
    fn the_model_does_not_depend_on_the_host_beyond_optional_features() {
        let a = guest_cpuid(&host_with_everything()).unwrap();
        let b = guest_cpuid(&host_with_everything()).unwrap();
        assert_eq!(a.as_slice(), b.as_slice());
        let vendor = find(&a, 0);
        let mut name = Vec::new();
        for r in [vendor.ebx, vendor.edx, vendor.ecx] {
            name.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&name, VENDOR);
    }

    #[test]
    fn a_host_without_a_baseline_feature_is_an_error() {
        let mut host = host_with_everything();
        for e in host.as_mut_slice() {
            if e.function == 1 {
                e.edx &= !(1 << 26);
            }
        }
        let err = guest_cpuid(&host).unwrap_err();
        assert!(err.to_string().contains("sse2"), "{err}");
    }
}
