//! FFI implementation (written next).
