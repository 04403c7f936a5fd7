//! How mimalloc (the binaries' global allocator) gives memory back to the OS.
//!
//! A flood of short-lived connections frees their buffers all at once; mimalloc 3 then waits
//! `purge_delay` (1 s by default) and only purges when the thread that owns those pages
//! allocates again, which an idle worker thread does not. So the flood's peak stayed resident
//! (benches/idle.sh: 2.5 to 4.4 KiB per idle connection from one run to the next, and 40 MiB
//! instead of 16 five seconds after every connection closed). With the delay of mimalloc 2
//! (10 ms) it is given back as it is freed: 2.4–2.5 KiB per idle connection on every run, no
//! measurable change in requests per second (benches/README.md). The workspace also builds
//! mimalloc with `no_thp` (no `madvise(MADV_HUGEPAGE)`): half the empty router's RSS.

/// mimalloc 3's `mi_option_purge_delay` (its `mi_option_e` in mimalloc.h; libmimalloc-sys
/// exports no constant for it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Milliseconds between freeing memory and giving it back.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// The delay while the routes are listed ([`listing`]).
const LISTING_PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// Sets the purge delay, unless `MIMALLOC_PURGE_DELAY` in the environment already chose one
/// (mimalloc reads its options from there as the process starts). Call first thing in `main`.
pub fn tune() {
    set_purge_delay(PURGE_DELAY_MS);
}

/// Whether a listing of the routes is under way. Its pages pass through buffers of a few MB
/// each (the gRPC message, the keys decoded from it), freed once the page is applied; given
/// back 10 ms later, the next page's buffers were fresh pages that the kernel zeroed first: a
/// sixth of the router's CPU in a start with a million routes, while the store needs both
/// cores. Meanwhile freed memory is kept a second for reuse instead (mimalloc's own default;
/// a listing that never ends, the store gone midway, keeps it so until the next one ends).
pub fn listing(under_way: bool) {
    set_purge_delay(if under_way {
        LISTING_PURGE_DELAY_MS
    } else {
        PURGE_DELAY_MS
    });
}

fn set_purge_delay(ms: std::ffi::c_long) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets one integer option, as mimalloc documents for any time; no pointers.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constant names the option mimalloc documents as the purge delay: it holds that
    /// option's default (1000 ms in mimalloc 3) until `tune` changes it. A new mimalloc that
    /// renumbers its options fails here instead of silently setting some other option.
    #[test]
    fn purge_delay_is_the_option_it_names() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        #[allow(unsafe_code)]
        // SAFETY: reads one integer option.
        let read = || unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(read(), 1000);
        tune();
        assert_eq!(read(), PURGE_DELAY_MS);
        listing(true);
        assert_eq!(read(), LISTING_PURGE_DELAY_MS);
        listing(false);
        assert_eq!(read(), PURGE_DELAY_MS);
    }
}
