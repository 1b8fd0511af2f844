//! glibc entry points the static `/init` defines itself, so that the linker
//! does not pull in the parts of glibc behind them (docs/building.md, "glibc
//! members /init does not need"). In a static link an archive member is only
//! extracted to resolve a symbol nothing else defines yet; each function here
//! was the way in to code PID 1 never runs: `scanf` and the `strtod` family,
//! static `dlopen`, gettext's catalogue loading, and five CPU-specific copies
//! each of `strcasecmp` and `strncasecmp` (about 150 KB on x86_64 in all).
//! Each replacement keeps the behaviour the binary had:
//!
//! - `dlsym`: std looks up optional glibc functions with it (`weak!`, e.g.
//!   `__pthread_get_minstack`). A static executable has no dynamic symbol
//!   table, so glibc's own `dlsym` finds nothing there either; std then uses
//!   its fallbacks (raw system calls, `PTHREAD_STACK_MIN`).
//! - `pthread_getattr_np`: std asks it for a thread's stack bounds to place its
//!   stack-overflow guard message; for the main thread glibc parses
//!   `/proc/self/maps` with `sscanf`. Without it std installs no guard range,
//!   and a stack overflow ends the process with `SIGSEGV` instead of std's
//!   message and `SIGABRT`: for PID 1 the same end (the kernel panics).
//! - `__assert_fail`: glibc's own assertions; glibc's version translates the
//!   message (gettext) and formats it with `fprintf`. Ours writes it plainly.
//! - `__strcasecmp`, `__strcasecmp_l`, `__strncasecmp`: glibc's internal
//!   names, called only by its resolver's `/etc/host.conf` parser and its
//!   locale-alias loader (both reachable from thread creation and `strerror`,
//!   never run by PID 1, which resolves no names and sets no locale). glibc
//!   picks one of five SIMD copies at load time, so all five are linked. Ours
//!   compare ASCII case-insensitively: what glibc does in the C locale, the
//!   only one PID 1 has.
//!
//! The symbols are exported only in the static board build (`+crt-static`);
//! dynamically linked test and host builds keep glibc's, and test these
//! functions as plain Rust. If a glibc release stops referencing a name, its
//! definition here is simply unused; if it referenced a name from an object
//! that also defines one of these, the link would fail with a duplicate
//! symbol, not misbehave. The armv7 build (GNU ld, glibc 2.36) links them the
//! same way.

#![cfg_attr(
    not(all(target_os = "linux", target_env = "gnu", target_feature = "crt-static")),
    allow(dead_code)
)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::io::Write;

/// Finds nothing, as glibc's `dlsym` does in a static executable.
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu", target_feature = "crt-static"),
    no_mangle
)]
pub extern "C" fn dlsym(_handle: *mut c_void, _symbol: *const c_char) -> *mut c_void {
    std::ptr::null_mut()
}

/// Reports that the thread's attributes are unavailable (`ENOSYS`); std's
/// callers treat any error as "no stack bounds known".
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu", target_feature = "crt-static"),
    no_mangle
)]
pub extern "C" fn pthread_getattr_np(_thread: libc::pthread_t, _attr: *mut c_void) -> c_int {
    libc::ENOSYS
}

/// The line glibc's `__assert_fail` prints, untranslated.
fn assert_message(
    assertion: *const c_char,
    file: *const c_char,
    line: c_uint,
    function: *const c_char,
) -> String {
    let text = |p: *const c_char| {
        if p.is_null() {
            std::borrow::Cow::Borrowed("?")
        } else {
            // SAFETY: glibc's assert macros pass NUL-terminated string literals.
            unsafe { CStr::from_ptr(p) }.to_string_lossy()
        }
    };
    format!(
        "{}:{}: {}: Assertion `{}' failed.",
        text(file),
        line,
        text(function),
        text(assertion)
    )
}

/// glibc's assertion failure: prints `file:line: function: Assertion `expr' failed.`
/// on stderr and aborts, as glibc does, without translating it.
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu", target_feature = "crt-static"),
    no_mangle
)]
pub extern "C" fn __assert_fail(
    assertion: *const c_char,
    file: *const c_char,
    line: c_uint,
    function: *const c_char,
) -> ! {
    let msg = assert_message(assertion, file, line, function);
    let _ = writeln!(std::io::stderr(), "{msg}");
    std::process::abort()
}

/// ASCII case-insensitive comparison of at most `n` bytes, as glibc's
/// `strncasecmp` in the C locale: the difference of the first differing
/// pair, lower-cased.
///
/// # Safety
/// `a` and `b` point to NUL-terminated strings (or to at least `n` bytes).
unsafe fn casecmp(a: *const c_char, b: *const c_char, n: usize) -> c_int {
    for i in 0..n {
        // SAFETY: the caller's strings are NUL-terminated or `n` long; the loop
        // stops at the first NUL of either (equal bytes up to there).
        let (x, y) = unsafe { (*a.add(i) as u8, *b.add(i) as u8) };
        let d = c_int::from(x.to_ascii_lowercase()) - c_int::from(y.to_ascii_lowercase());
        if d != 0 || x == 0 {
            return d;
        }
    }
    0
}

/// glibc's internal `strcasecmp`.
///
/// # Safety
/// As `strcasecmp(3)`: both arguments NUL-terminated.
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu", target_feature = "crt-static"),
    no_mangle
)]
pub unsafe extern "C" fn __strcasecmp(a: *const c_char, b: *const c_char) -> c_int {
    // SAFETY: as `casecmp`, which the caller's contract meets.
    unsafe { casecmp(a, b, usize::MAX) }
}

/// glibc's internal locale-taking `strcasecmp`; the locale is ignored (C).
///
/// # Safety
/// As `strcasecmp_l(3)`: both strings NUL-terminated.
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu", target_feature = "crt-static"),
    no_mangle
)]
pub unsafe extern "C" fn __strcasecmp_l(
    a: *const c_char,
    b: *const c_char,
    _locale: *mut c_void,
) -> c_int {
    // SAFETY: as `casecmp`, which the caller's contract meets.
    unsafe { casecmp(a, b, usize::MAX) }
}

/// glibc's internal `strncasecmp`.
///
/// # Safety
/// As `strncasecmp(3)`: NUL-terminated or at least `n` bytes each.
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu", target_feature = "crt-static"),
    no_mangle
)]
pub unsafe extern "C" fn __strncasecmp(a: *const c_char, b: *const c_char, n: usize) -> c_int {
    // SAFETY: as `casecmp`, which the caller's contract meets.
    unsafe { casecmp(a, b, n) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    /// Our comparisons agree with glibc's own `strcasecmp`/`strncasecmp` (the
    /// test binary is dynamically linked, so `libc::` is glibc's) in sign, on
    /// generated ASCII strings, prefixes and lengths.
    #[test]
    fn case_comparisons_agree_with_glibc_in_the_c_locale() {
        let words = [
            "", "a", "A", "abc", "ABD", "abcd", "hosts", "HOSTS", "multi", "Multi on", "nospoof",
            "z", "[", "_", "@", "`", "{",
        ];
        let sign = |x: c_int| x.signum();
        for a in words {
            for b in words {
                let (ca, cb) = (CString::new(a).unwrap(), CString::new(b).unwrap());
                // SAFETY: both are NUL-terminated.
                let (ours, theirs) = unsafe {
                    (
                        __strcasecmp(ca.as_ptr(), cb.as_ptr()),
                        libc::strcasecmp(ca.as_ptr(), cb.as_ptr()),
                    )
                };
                assert_eq!(sign(ours), sign(theirs), "{a:?} vs {b:?}");
                // SAFETY: as above.
                let l = unsafe { __strcasecmp_l(ca.as_ptr(), cb.as_ptr(), std::ptr::null_mut()) };
                assert_eq!(sign(l), sign(theirs), "{a:?} vs {b:?}");
                for n in 0..6 {
                    // SAFETY: as above.
                    let (ours, theirs) = unsafe {
                        (
                            __strncasecmp(ca.as_ptr(), cb.as_ptr(), n),
                            libc::strncasecmp(ca.as_ptr(), cb.as_ptr(), n),
                        )
                    };
                    assert_eq!(sign(ours), sign(theirs), "{a:?} vs {b:?}, n = {n}");
                }
            }
        }
    }

    #[test]
    fn assertion_message_is_glibcs_line() {
        let (e, f, func) = (
            CString::new("x > 0").unwrap(),
            CString::new("res_hconf.c").unwrap(),
            CString::new("parse").unwrap(),
        );
        assert_eq!(
            assert_message(e.as_ptr(), f.as_ptr(), 12, func.as_ptr()),
            "res_hconf.c:12: parse: Assertion `x > 0' failed."
        );
        assert_eq!(
            assert_message(std::ptr::null(), f.as_ptr(), 1, std::ptr::null()),
            "res_hconf.c:1: ?: Assertion `?' failed."
        );
    }

    #[test]
    fn no_dynamic_symbols_and_no_thread_attributes() {
        assert!(dlsym(std::ptr::null_mut(), std::ptr::null()).is_null());
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        assert_eq!(pthread_getattr_np(me, std::ptr::null_mut()), libc::ENOSYS);
    }
}
