//! `AlignedBuf`: a zeroed heap buffer whose start is aligned to a power of two (4096 for
//! O_DIRECT, see [`ALIGN`]).
//!
//! Invariants: the pointer is aligned to [`AlignedBuf::align`] and valid for
//! [`AlignedBuf::len`] bytes for the buffer's whole life; every byte is initialised (zeroed at
//! creation); the buffer owns its allocation alone, so it is `Send` and `Sync` like a
//! `Vec<u8>`. Creation never panics or aborts: a bad alignment or a failed allocation is an
//! `io::Error`.

use std::alloc::{self, Layout};
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The alignment O_DIRECT asks of offsets, lengths and buffer addresses here: 4 KiB, the
/// largest logical block size of common disks and filesystems (so it satisfies 512 too).
pub const ALIGN: usize = 4096;

/// A zero-initialised byte buffer aligned to a power of two.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    align: usize,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively (no other handle to it exists), like a
// `Vec<u8>`, so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out `&[u8]`; mutation needs `&mut AlignedBuf`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zeroed bytes aligned to [`ALIGN`].
    pub fn new(len: usize) -> io::Result<AlignedBuf> {
        Self::with_align(len, ALIGN)
    }

    /// `len` zeroed bytes aligned to `align` (a power of two). EINVAL for an alignment that
    /// is not a power of two or a size too large to describe, ENOMEM when the allocator fails.
    pub fn with_align(len: usize, align: usize) -> io::Result<AlignedBuf> {
        let layout = Self::layout(len, align)?;
        // SAFETY: `layout` has a non-zero size (`layout` rounds 0 up to 1) and a valid
        // power-of-two alignment, as `alloc_zeroed` requires.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(AlignedBuf { ptr, len, align })
    }

    /// The allocation's layout: never zero-sized, since the global allocator does not take
    /// zero-sized requests.
    fn layout(len: usize, align: usize) -> io::Result<Layout> {
        Layout::from_size_align(len.max(1), align)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// The alignment of the start of the buffer.
    pub fn align(&self) -> usize {
        self.align
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised bytes (zeroed at allocation) until
        // drop, and `&self` forbids mutation for the borrow's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access for the borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // `with_align` built this same layout successfully, so this cannot fail.
        if let Ok(layout) = Self::layout(self.len, self.align) {
            // SAFETY: `ptr` came from `alloc_zeroed` with this exact layout and is freed once.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("align", &self.align)
            .finish()
    }
}

/// True when `p` is a multiple of [`ALIGN`] (an offset, a length or an address).
pub(crate) fn is_aligned(p: u64) -> bool {
    p % ALIGN as u64 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for (len, align) in [(4096, 4096), (1, 4096), (12345, 512), (8192, 65536)] {
            let b = AlignedBuf::with_align(len, align).unwrap();
            assert_eq!(b.as_ptr() as usize % align, 0);
            assert_eq!(b.len(), len);
            assert_eq!(b.align(), align);
            assert!(b.iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn zero_length_is_an_empty_slice() {
        let b = AlignedBuf::new(0).unwrap();
        assert!(b.is_empty());
        assert_eq!(&b[..], &[] as &[u8]);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn writable_and_movable_across_threads() {
        let mut b = AlignedBuf::new(ALIGN * 2).unwrap();
        b[ALIGN..].fill(7);
        let b = std::thread::spawn(move || b).join().unwrap();
        assert!(b[..ALIGN].iter().all(|&x| x == 0));
        assert!(b[ALIGN..].iter().all(|&x| x == 7));
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        let e = AlignedBuf::with_align(4096, 3000).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let e = AlignedBuf::with_align(usize::MAX - 10, 4096).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        // Describable but far beyond memory: the allocator says no.
        let e = AlignedBuf::with_align(isize::MAX as usize - 8191, 4096).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOMEM));
    }

    #[test]
    fn alignment_predicate() {
        assert!(is_aligned(0) && is_aligned(8192));
        assert!(!is_aligned(512) && !is_aligned(4097));
    }
}
