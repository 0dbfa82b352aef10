//! ELF core writer (work in progress in this commit).

/// Writer options.
#[derive(Clone, Debug, Default)]
pub struct ElfCoreOptions;

/// Progress.
#[derive(Clone, Copy, Debug)]
pub struct WriteProgress;

/// Writes an ELF core.
pub fn write_elf_core() {}
