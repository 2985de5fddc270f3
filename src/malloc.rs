//! glibc malloc's two thresholds, fixed at start-up instead of adapting.
//!
//! By default glibc raises its mmap threshold to the size of the largest mmapped block freed
//! so far (up to 32 MiB) and its trim threshold to twice that. After one large block comes and
//! goes, every malloc arena then keeps up to that much freed memory at its top instead of
//! returning it, and the server has one arena per worker and per blocking-pool thread that
//! touched the database. Fixed thresholds stop that: blocks of 1 MiB and more are mapped and
//! unmapped on their own, and an arena gives back free memory above 128 KiB (glibc's own
//! starting value). At 256 connections on SQLite, the median peak RSS of interleaved runs fell
//! from 105.6 to 100.6 MiB with no measurable CPU cost (docs/BENCHMARKS.md, "Fifth pass").
//!
//! An operator's own `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` (glibc's tunables
//! as environment variables) wins: with either set, nothing is changed here.

/// Blocks of this size or more get a mapping of their own.
const MMAP_THRESHOLD: usize = 1 << 20;
/// Free memory above this at an arena's top is returned to the system.
const TRIM_THRESHOLD: usize = 128 << 10;

/// The glibc environment variables that mean the operator chose the thresholds.
const OPERATOR_VARS: [&str; 2] = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"];

/// Whether the operator chose the thresholds: either variable is set (`is_set` answers for
/// one name).
fn operator_chose(is_set: impl Fn(&str) -> bool) -> bool {
    OPERATOR_VARS.iter().any(|v| is_set(v))
}

/// Sets the thresholds for this process (see the module's documentation). Call it first in
/// `main`, before any thread starts. Returns whether they were set: `false` when the operator
/// chose them, or off glibc.
pub fn tune() -> bool {
    if operator_chose(|v| std::env::var_os(v).is_some()) {
        return false;
    }
    set(MMAP_THRESHOLD, TRIM_THRESHOLD)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(mmap: usize, trim: usize) -> bool {
    let (Ok(mmap), Ok(trim)) = (libc::c_int::try_from(mmap), libc::c_int::try_from(trim)) else {
        return false;
    };
    // SAFETY: mallopt only stores the two parameters in glibc's malloc state (under its lock);
    // it takes no pointer.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_mmap: usize, _trim: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_s_variables_win() {
        assert!(!operator_chose(|_| false));
        for var in OPERATOR_VARS {
            assert!(operator_chose(|v| v == var), "{var}");
        }
    }

    /// glibc accepts both values (mallopt answers 1). Then a block under the mmap threshold
    /// comes from an arena (glibc's starting threshold, 128 KiB, would have mapped it), and a
    /// block over it gets a mapping of its own, returned when it is freed.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_thresholds() {
        assert!(set(MMAP_THRESHOLD, TRIM_THRESHOLD));
        // SAFETY: mallinfo2 only reads malloc's statistics.
        let mapped = || unsafe { libc::mallinfo2().hblkhd };
        let before = mapped();
        let small = std::hint::black_box(vec![1u8; MMAP_THRESHOLD / 2]);
        assert_eq!(mapped(), before, "half the threshold is not mapped");
        let large = std::hint::black_box(vec![1u8; 2 * MMAP_THRESHOLD]);
        let during = mapped();
        assert!(
            during >= before + 2 * MMAP_THRESHOLD,
            "{before} -> {during}"
        );
        drop(large);
        drop(small);
        assert_eq!(mapped(), before);
    }
}
