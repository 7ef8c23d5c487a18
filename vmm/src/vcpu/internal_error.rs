//! KVM_EXIT_INTERNAL_ERROR as one line: where the vCPU was and, for an
//! emulation failure, the instruction's bytes and name.

use kvm_bindings::KVM_INTERNAL_ERROR_EMULATION;

/// What KVM_EXIT_INTERNAL_ERROR reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalError {
    pub suberror: u32,
    /// The instruction's bytes, when KVM gave them (emulation failures).
    pub insn: Option<Vec<u8>>,
}

/// Where the vCPU was when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuState {
    pub rip: u64,
    pub cs: u16,
    pub cpl: u8,
    pub cr0: u64,
    pub cr4: u64,
}

impl InternalError {
    /// One line naming the failure, where it happened and, for an emulation
    /// failure, the instruction's bytes and what they are when we know
    /// (the instructions an emulating KVM is known to refuse).
    pub fn report(&self, at: Option<CpuState>) -> String {
        let mut line = match self.suberror {
            KVM_INTERNAL_ERROR_EMULATION => {
                "KVM internal error: emulation failure (suberror 1)".to_string()
            }
            n => format!("KVM internal error (suberror {n})"),
        };
        match at {
            Some(c) => line.push_str(&format!(
                " at RIP {:#x} (CS {:#x}, CPL {}, CR0 {:#x}, CR4 {:#x})",
                c.rip, c.cs, c.cpl, c.cr0, c.cr4
            )),
            None => line.push_str(" (registers unavailable)"),
        }
        if let Some(insn) = &self.insn {
            let hex: Vec<String> = insn.iter().map(|b| format!("{b:02x}")).collect();
            line.push_str(&format!(": instruction bytes [{}]", hex.join(" ")));
            if let Some(name) = instruction_name(insn) {
                line.push_str(&format!(" ({name})"));
            }
        }
        line
    }
}

/// The name of the instruction starting `insn`, for the few an emulating
/// KVM is known to refuse (see the project's NOTES); None otherwise.
pub fn instruction_name(insn: &[u8]) -> Option<&'static str> {
    // Skip prefixes that do not change these opcodes: operand and address
    // size, segment overrides, LOCK and REX. F2/F3 stay: they select
    // POPCNT and CRC32.
    let start = insn.iter().position(|b| {
        !matches!(
            b,
            0x66 | 0x67 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 | 0xf0 | 0x40..=0x4f
        )
    })?;
    let op = &insn[start..];
    let modrm_reg = |i: usize| op.get(i).map(|m| (m >> 3) & 7);
    Some(match op {
        [0xcc, ..] => "INT3",
        [0xcd, ..] => "INT n",
        [0x9b, ..] => "FWAIT",
        [0x0f, 0x01, 0xca, ..] => "CLAC",
        [0x0f, 0x01, 0xcb, ..] => "STAC",
        [0x0f, 0x01, 0xd0, ..] => "XGETBV",
        [0x0f, 0x01, 0xf9, ..] => "RDTSCP",
        [0x0f, 0xae, m, ..] if *m < 0xc0 && modrm_reg(2) == Some(4) => "XSAVE",
        [0x0f, 0xae, m, ..] if *m < 0xc0 && modrm_reg(2) == Some(5) => "XRSTOR",
        [0x0f, 0xae, m, ..] if *m < 0xc0 && modrm_reg(2) == Some(2) => "LDMXCSR",
        [0xf3, 0x0f, 0xb8, ..] | [0xf3, 0x40..=0x4f, 0x0f, 0xb8, ..] => "POPCNT",
        [0xf2, 0x0f, 0x38, 0xf0 | 0xf1, ..] | [0xf2, 0x40..=0x4f, 0x0f, 0x38, 0xf0 | 0xf1, ..] => {
            "CRC32"
        }
        [0x0f, 0x38, 0xf0 | 0xf1, ..] => "MOVBE",
        [0x0f, 0xc7, m, ..] if *m < 0xc0 && modrm_reg(2) == Some(1) => "CMPXCHG8B/16B",
        [0x0f, 0xef, ..] => "PXOR",
        [0x0f, 0x74, ..] => "PCMPEQB",
        [0x0f, 0xd7, ..] => "PMOVMSKB",
        [0xd9, 0xe8, ..] => "FLD1",
        [0xc4 | 0xc5, ..] => "a VEX-encoded (AVX/BMI) instruction",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emulation_failure_names_the_place_and_the_instruction() {
        let e = InternalError {
            suberror: KVM_INTERNAL_ERROR_EMULATION,
            insn: Some(vec![0x0f, 0x01, 0xcb, 0x48, 0x89]),
        };
        let at = CpuState {
            rip: 0xffff_ffff_8100_1234,
            cs: 0x10,
            cpl: 0,
            cr0: 0x8005_0033,
            cr4: 0x3006b0,
        };
        assert_eq!(
            e.report(Some(at)),
            "KVM internal error: emulation failure (suberror 1) at RIP 0xffffffff81001234 \
             (CS 0x10, CPL 0, CR0 0x80050033, CR4 0x3006b0): instruction bytes \
             [0f 01 cb 48 89] (STAC)"
        );
        let other = InternalError {
            suberror: 3,
            insn: None,
        };
        assert_eq!(
            other.report(None),
            "KVM internal error (suberror 3) (registers unavailable)"
        );
    }

    #[test]
    fn known_refused_instructions_are_named() {
        for (bytes, name) in [
            (&[0xcc][..], "INT3"),
            (&[0xcd, 0x80], "INT n"),
            (&[0x9b], "FWAIT"),
            (&[0x0f, 0x01, 0xca], "CLAC"),
            (&[0x0f, 0x01, 0xd0], "XGETBV"),
            (&[0x0f, 0x01, 0xf9], "RDTSCP"),
            (&[0x48, 0x0f, 0xae, 0x27], "XSAVE"), // xsave64 [rdi]
            (&[0xf3, 0x48, 0x0f, 0xb8, 0xc7], "POPCNT"),
            (&[0xf2, 0x0f, 0x38, 0xf1, 0xc1], "CRC32"),
            (&[0x0f, 0x38, 0xf0, 0x07], "MOVBE"),
            (&[0x66, 0x0f, 0xef, 0xc0], "PXOR"),
            (
                &[0xc4, 0xe2, 0x78, 0xf2],
                "a VEX-encoded (AVX/BMI) instruction",
            ),
        ] {
            assert_eq!(instruction_name(bytes), Some(name), "{bytes:02x?}");
        }
        // Instructions this KVM does emulate, and nothing, are not named.
        for bytes in [
            &[0x0f, 0xa2][..],
            &[0x48, 0x89, 0xe5],
            &[0x0f, 0xae, 0xe8],
            &[],
        ] {
            assert_eq!(instruction_name(bytes), None, "{bytes:02x?}");
        }
    }
}
