//! Typed guest addresses.
//!
//! Three newtypes keep the address spaces apart: [`Va`] (guest-virtual), [`Pa`]
//! (guest-physical) and [`Gfn`] (guest frame number). They cannot be mixed up: `Va + Va`
//! and `Va + Pa` do not compile, `Va - Va` is a distance (`u64`).
//!
//! Overflow semantics are explicit. The operators (`+ u64`, `- u64`, `Va - Va`) compute
//! modulo 2^64, exactly as the CPU's address arithmetic does, so they never panic on
//! guest-supplied values. Use the `checked_*` methods where an overflow means the guest
//! data is bogus and must be reported.
//!
//! ```
//! use vmi_core::{Va, Pa};
//! let base = Va(0xffff_ffff_8100_0000);
//! assert_eq!(base + 0x10, Va(0xffff_ffff_8100_0010));
//! assert_eq!(Va(0x2000) - Va(0x1000), 0x1000);
//! assert_eq!(Va(u64::MAX).checked_add(1), None);
//! assert_eq!(format!("{}", Pa(0x1000)), "0x1000");
//! ```
//!
//! ```compile_fail
//! use vmi_core::Va;
//! let _ = Va(1) + Va(2); // adding two addresses is meaningless
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Add, AddAssign, Sub, SubAssign};

macro_rules! address_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            #[doc = concat!("The ", $what, " as a plain integer.")]
            pub const fn value(self) -> u64 {
                self.0
            }

            #[doc = concat!("Adds `rhs`, or `None` if the ", $what, " would overflow.")]
            pub const fn checked_add(self, rhs: u64) -> Option<Self> {
                match self.0.checked_add(rhs) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            #[doc = concat!("Subtracts `rhs`, or `None` if the ", $what, " would underflow.")]
            pub const fn checked_sub(self, rhs: u64) -> Option<Self> {
                match self.0.checked_sub(rhs) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Adds `rhs` modulo 2^64 (what the operator `+` does).
            pub const fn wrapping_add(self, rhs: u64) -> Self {
                Self(self.0.wrapping_add(rhs))
            }

            /// Subtracts `rhs` modulo 2^64 (what the operator `-` does).
            pub const fn wrapping_sub(self, rhs: u64) -> Self {
                Self(self.0.wrapping_sub(rhs))
            }

            /// Distance from `other` up to `self`, or `None` if `other > self`.
            pub const fn checked_offset_from(self, other: Self) -> Option<u64> {
                self.0.checked_sub(other.0)
            }

            /// Rounds down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align.wrapping_sub(1)))
            }

            /// Whether the value is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & align.wrapping_sub(1) == 0
            }

            /// Whether this is the null address.
            pub const fn is_null(self) -> bool {
                self.0 == 0
            }
        }

        impl Add<u64> for $name {
            type Output = Self;
            fn add(self, rhs: u64) -> Self {
                self.wrapping_add(rhs)
            }
        }

        impl AddAssign<u64> for $name {
            fn add_assign(&mut self, rhs: u64) {
                *self = self.wrapping_add(rhs);
            }
        }

        impl Sub<u64> for $name {
            type Output = Self;
            fn sub(self, rhs: u64) -> Self {
                self.wrapping_sub(rhs)
            }
        }

        impl SubAssign<u64> for $name {
            fn sub_assign(&mut self, rhs: u64) {
                *self = self.wrapping_sub(rhs);
            }
        }

        impl Sub for $name {
            type Output = u64;
            fn sub(self, rhs: Self) -> u64 {
                self.0.wrapping_sub(rhs.0)
            }
        }

        impl From<u64> for $name {
            fn from(value: u64) -> Self {
                Self(value)
            }
        }

        impl From<$name> for u64 {
            fn from(value: $name) -> u64 {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        impl fmt::UpperHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::UpperHex::fmt(&self.0, f)
            }
        }
    };
}

address_type!(
    /// A guest-virtual address.
    Va,
    "virtual address"
);
address_type!(
    /// A guest-physical address.
    Pa,
    "physical address"
);
address_type!(
    /// A guest frame number: a guest-physical address divided by the page size.
    ///
    /// Conversions to and from [`Pa`] depend on the page size and live in
    /// [`Architecture`](crate::Architecture).
    Gfn,
    "frame number"
);

/// A typed pointer into guest-virtual memory: the address of a `T` in the guest.
///
/// It only records intent; reading the pointee is done by the core
/// (`VmiCore::read_struct`) or an OS layer.
#[repr(transparent)]
pub struct Pointer<T> {
    va: Va,
    _pointee: PhantomData<fn() -> T>,
}

impl<T> Pointer<T> {
    /// A pointer to a `T` at `va`.
    pub const fn new(va: Va) -> Self {
        Self {
            va,
            _pointee: PhantomData,
        }
    }

    /// The address it points to.
    pub const fn va(self) -> Va {
        self.va
    }

    /// Whether it is null.
    pub const fn is_null(self) -> bool {
        self.va.is_null()
    }
}

impl<T> Clone for Pointer<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Pointer<T> {}
impl<T> PartialEq for Pointer<T> {
    fn eq(&self, other: &Self) -> bool {
        self.va == other.va
    }
}
impl<T> Eq for Pointer<T> {}
impl<T> fmt::Debug for Pointer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pointer<{}>({:#x})",
            std::any::type_name::<T>(),
            self.va.0
        )
    }
}

/// The number of a virtual CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId(pub u16);

impl fmt::Display for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vcpu{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_wraps_and_checks() {
        assert_eq!(Va(u64::MAX) + 1, Va(0));
        assert_eq!(Va(0) - 1, Va(u64::MAX));
        assert_eq!(Va(0).checked_sub(1), None);
        assert_eq!(Pa(0x1234).align_down(0x1000), Pa(0x1000));
        assert!(Pa(0x2000).is_aligned(0x1000));
        assert_eq!(Va(0x10).checked_offset_from(Va(0x20)), None);
        assert_eq!(format!("{:?}", Gfn(0x10)), "Gfn(0x10)");
        let p: Pointer<u64> = Pointer::new(Va(8));
        assert_eq!(p.va(), Va(8));
    }
}
