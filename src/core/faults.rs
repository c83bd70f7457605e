//! Crash points: the boundaries between a side effect and its record, where a test build
//! (feature `failpoints`) can be made to die as a `kill -9` would, to prove that a restart
//! finishes the work once. `FAILPOINTS="push-done=return"` aborts the process at
//! `crash_point("push-done")`; `std::process::abort` runs no destructor and no panic handler.
//! Release builds leave the feature, and every point, out.

/// Aborts the process here when the `failpoints` feature is on and `FAILPOINTS` names `name`.
#[cfg(feature = "failpoints")]
pub fn crash_point(name: &str) {
    let _: Option<()> = fail::eval(name, |_| std::process::abort());
}

/// Does nothing: this build has no failpoints.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}

/// The error a write fails with when the disk is full, returned here when the `failpoints`
/// feature is on and `FAILPOINTS` names `name` (for disks a test cannot fill).
#[cfg(feature = "failpoints")]
pub fn disk_full_point(name: &str) -> std::io::Result<()> {
    fail::eval(name, |_| std::io::Error::from_raw_os_error(libc::ENOSPC)).map_or(Ok(()), Err)
}

/// Does nothing: this build has no failpoints.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn disk_full_point(_name: &str) -> std::io::Result<()> {
    Ok(())
}
