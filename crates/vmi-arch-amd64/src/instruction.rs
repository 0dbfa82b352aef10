//! Instruction encodings the drivers need to know without a decoder.
//!
//! A driver that continues past a software breakpoint must execute the instruction the
//! `int3` replaced. When that instruction is a no-op (a kernel function's `__fentry__`
//! padding, `endbr64`), moving `rip` past it is all executing it does, which saves a
//! single-step (and works where the hypervisor cannot single-step).

/// Longest instruction [`nop_length`] knows.
pub const MAX_NOP_LENGTH: usize = 11;

/// The length of the no-op instruction `code` starts with, if it is one of the encodings
/// compilers and the kernel emit for padding and `__fentry__` sites (the recommended
/// multi-byte `nop` forms, `xchg ax, ax`, `endbr64`); `None` for anything else. Exact
/// byte patterns, not a decoder: an instruction this does not know is single-stepped.
pub fn nop_length(code: &[u8]) -> Option<usize> {
    const NOPS: &[&[u8]] = &[
        &[0x90],
        &[0x66, 0x90],
        &[0x0f, 0x1f, 0x00],
        &[0x0f, 0x1f, 0x40, 0x00],
        &[0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
        &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[
            0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00,
        ],
        // endbr64: ends an indirect branch's IBT tracking, no other effect. (Where IBT is
        // enforced, an `int3` in its place faults on an indirect call before it traps;
        // QEMU's TCG does not emulate IBT.)
        &[0xf3, 0x0f, 0x1e, 0xfa],
    ];
    NOPS.iter().find(|n| code.starts_with(n)).map(|n| n.len())
}

#[cfg(test)]
mod tests {
    use super::{MAX_NOP_LENGTH, nop_length};

    #[test]
    fn known_nops_and_nothing_else() {
        // The kernel's ftrace site (P6_NOP5), then `sub rsp, 0x20`.
        assert_eq!(
            nop_length(&[0x0f, 0x1f, 0x44, 0x00, 0x00, 0x48, 0x83, 0xec]),
            Some(5)
        );
        assert_eq!(nop_length(&[0xf3, 0x0f, 0x1e, 0xfa, 0x0f, 0x1f]), Some(4));
        assert_eq!(nop_length(&[0x90, 0xcc]), Some(1));
        // push rbp; call rel32; a truncated nop; a nop with a non-zero displacement
        // (still a nop, but not a form we know: stepped).
        assert_eq!(nop_length(&[0x55, 0x48, 0x89, 0xe5]), None);
        assert_eq!(nop_length(&[0xe8, 0x00, 0x00, 0x00, 0x00]), None);
        assert_eq!(nop_length(&[0x0f, 0x1f, 0x44, 0x00]), None);
        assert_eq!(nop_length(&[0x0f, 0x1f, 0x44, 0x00, 0x01]), None);
        assert_eq!(nop_length(&[]), None);
        assert!(
            (0..=255u8)
                .all(|b| nop_length(&[b; MAX_NOP_LENGTH]).is_none_or(|n| n <= MAX_NOP_LENGTH))
        );
    }
}
