//! BAR address allocation: a 32-bit MMIO window below 4 GiB, an optional
//! 64-bit window above RAM and an optional port-I/O window. Allocations are
//! naturally aligned (a BAR's base is a multiple of its size) and never
//! overlap.

use std::collections::BTreeMap;

use thiserror::Error;

use super::config::BarKind;

/// Errors allocating addresses.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AllocError {
    /// Sizes and alignments must be non-zero powers of two.
    #[error("size {size:#x} or alignment {align:#x} is not a power of two")]
    NotPowerOfTwo {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
    },
    /// No free, aligned range of that size is left.
    #[error("no free {size:#x}-byte range left in window {start:#x}..={end:#x}")]
    Exhausted {
        /// Requested size.
        size: u64,
        /// Window start.
        start: u64,
        /// Window end (inclusive).
        end: u64,
    },
    /// The fixed range overlaps an existing allocation.
    #[error("range {addr:#x}+{size:#x} overlaps an allocation")]
    Overlap {
        /// Requested base.
        addr: u64,
        /// Requested size.
        size: u64,
    },
    /// The fixed range is not inside the window.
    #[error("range {addr:#x}+{size:#x} is outside the window")]
    OutsideWindow {
        /// Requested base.
        addr: u64,
        /// Requested size.
        size: u64,
    },
    /// The window is empty or wraps past the end of the address space.
    #[error("window {start:#x}+{size:#x} is empty or wraps")]
    BadWindow {
        /// Window start.
        start: u64,
        /// Window size.
        size: u64,
    },
    /// There is no window for this kind of BAR (e.g. no I/O window).
    #[error("no window for {0:?} BARs")]
    NoWindow(BarKind),
}

/// One contiguous range handed out piece by piece.
#[derive(Clone, Debug)]
pub struct AddressWindow {
    start: u64,
    /// Inclusive.
    end: u64,
    /// base -> size.
    used: BTreeMap<u64, u64>,
}

impl AddressWindow {
    /// A window of `size` bytes at `start`.
    pub fn new(start: u64, size: u64) -> Result<Self, AllocError> {
        let end = size
            .checked_sub(1)
            .and_then(|s| start.checked_add(s))
            .ok_or(AllocError::BadWindow { start, size })?;
        Ok(Self {
            start,
            end,
            used: BTreeMap::new(),
        })
    }

    /// First address of the window.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last address of the window (inclusive).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The lowest free range of `size` bytes aligned to `align`.
    pub fn allocate(&mut self, size: u64, align: u64) -> Result<u64, AllocError> {
        if !size.is_power_of_two() || !align.is_power_of_two() {
            return Err(AllocError::NotPowerOfTwo { size, align });
        }
        let exhausted = AllocError::Exhausted {
            size,
            start: self.start,
            end: self.end,
        };
        let mut candidate = align_up(self.start, align).ok_or(exhausted.clone())?;
        for (&base, &len) in &self.used {
            let fits_before = candidate
                .checked_add(size - 1)
                .is_some_and(|last| last < base);
            if fits_before {
                break;
            }
            let after = base + (len - 1);
            if after >= candidate {
                candidate = after
                    .checked_add(1)
                    .and_then(|a| align_up(a, align))
                    .ok_or(exhausted.clone())?;
            }
        }
        match candidate.checked_add(size - 1) {
            Some(last) if last <= self.end => {
                self.used.insert(candidate, size);
                Ok(candidate)
            }
            _ => Err(exhausted),
        }
    }

    /// Reserves exactly `addr..addr + size`.
    pub fn allocate_at(&mut self, addr: u64, size: u64) -> Result<(), AllocError> {
        let last = size
            .checked_sub(1)
            .and_then(|s| addr.checked_add(s))
            .filter(|l| addr >= self.start && *l <= self.end)
            .ok_or(AllocError::OutsideWindow { addr, size })?;
        let overlaps = self
            .used
            .range(..=last)
            .next_back()
            .is_some_and(|(&b, &l)| b + (l - 1) >= addr);
        if overlaps {
            return Err(AllocError::Overlap { addr, size });
        }
        self.used.insert(addr, size);
        Ok(())
    }

    /// Releases the allocation starting at `addr`; false if there was none.
    pub fn free(&mut self, addr: u64) -> bool {
        self.used.remove(&addr).is_some()
    }
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

/// Where BARs go: 32-bit memory BARs in `mmio32`; 64-bit memory BARs in
/// `mmio64` when there is one, else in `mmio32`; I/O BARs in `io`.
#[derive(Clone, Debug)]
pub struct BarAllocator {
    mmio32: AddressWindow,
    mmio64: Option<AddressWindow>,
    io: Option<AddressWindow>,
}

impl BarAllocator {
    /// Default 32-bit window: 0xC000_0000 up to the ECAM/IOAPIC area.
    pub const DEFAULT_MMIO32: (u64, u64) = (0xc000_0000, 0x2000_0000);

    /// An allocator over the given windows. The 32-bit window must end below
    /// 4 GiB.
    pub fn new(
        mmio32: AddressWindow,
        mmio64: Option<AddressWindow>,
        io: Option<AddressWindow>,
    ) -> Result<Self, AllocError> {
        if mmio32.end() > u64::from(u32::MAX) {
            return Err(AllocError::BadWindow {
                start: mmio32.start(),
                size: mmio32.end() - mmio32.start() + 1,
            });
        }
        Ok(Self { mmio32, mmio64, io })
    }

    /// Allocates a naturally aligned range for a BAR of `kind` and `size`.
    pub fn allocate(&mut self, kind: BarKind, size: u64) -> Result<u64, AllocError> {
        let window = match kind {
            BarKind::Io => self.io.as_mut().ok_or(AllocError::NoWindow(kind))?,
            BarKind::Memory32 { .. } => &mut self.mmio32,
            BarKind::Memory64 { .. } => self.mmio64.as_mut().unwrap_or(&mut self.mmio32),
        };
        window.allocate(size, size)
    }

    /// Releases a BAR allocated earlier.
    pub fn free(&mut self, kind: BarKind, addr: u64) -> bool {
        match kind {
            BarKind::Io => self.io.as_mut().is_some_and(|w| w.free(addr)),
            BarKind::Memory32 { .. } => self.mmio32.free(addr),
            BarKind::Memory64 { .. } => {
                self.mmio64.as_mut().is_some_and(|w| w.free(addr)) || self.mmio32.free(addr)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_alignment_and_first_fit() {
        let mut w = AddressWindow::new(0xc000_0000, 0x10_0000).unwrap();
        assert_eq!(w.allocate(0x1000, 0x1000), Ok(0xc000_0000));
        assert_eq!(w.allocate(0x4000, 0x4000), Ok(0xc000_4000));
        assert_eq!(w.allocate(0x1000, 0x1000), Ok(0xc000_1000), "hole reused");
        assert_eq!(w.allocate(0x2000, 0x2000), Ok(0xc000_2000));
        assert_eq!(w.allocate(0x8_0000, 0x8_0000), Ok(0xc008_0000));
        assert!(w.free(0xc000_4000));
        assert!(!w.free(0xc000_4000));
        assert_eq!(w.allocate(0x4000, 0x4000), Ok(0xc000_4000));
    }

    /// The variant `r` was refused with, so a refused request reads as
    /// one line; anything else fails the test.
    fn refused<T: std::fmt::Debug>(r: Result<T, AllocError>) -> &'static str {
        match r {
            Err(AllocError::NotPowerOfTwo { .. }) => "NotPowerOfTwo",
            Err(AllocError::Exhausted { .. }) => "Exhausted",
            Err(AllocError::Overlap { .. }) => "Overlap",
            Err(AllocError::OutsideWindow { .. }) => "OutsideWindow",
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn unaligned_window_start() {
        let mut w = AddressWindow::new(0x1234, 0x10000).unwrap();
        assert_eq!(w.allocate(0x1000, 0x1000), Ok(0x2000));
        assert_eq!(w.allocate(0x10, 0x10), Ok(0x1240));
    }

    #[test]
    fn exhaustion_and_bad_requests() {
        let mut w = AddressWindow::new(0x1000, 0x2000).unwrap();
        assert_eq!(refused(w.allocate(0x4000, 0x4000)), "Exhausted");
        // 0x2000 is the only 0x2000-aligned base, and 0x2000..0x4000 passes the end.
        assert_eq!(refused(w.allocate(0x2000, 0x2000)), "Exhausted");
        assert_eq!(w.allocate(0x1000, 0x1000), Ok(0x1000));
        assert_eq!(w.allocate(0x1000, 0x1000), Ok(0x2000));
        assert_eq!(refused(w.allocate(0x10, 0x10)), "Exhausted");
        assert_eq!(refused(w.allocate(0x30, 0x10)), "NotPowerOfTwo");
        assert_eq!(refused(w.allocate(0, 0x10)), "NotPowerOfTwo");
        assert!(AddressWindow::new(0x1000, 0).is_err());
        assert!(AddressWindow::new(u64::MAX, 2).is_err());
    }

    #[test]
    fn top_of_address_space_does_not_overflow() {
        let mut w = AddressWindow::new(u64::MAX - 0xfff, 0x1000).unwrap();
        assert_eq!(w.allocate(0x1000, 0x1000), Ok(u64::MAX - 0xfff));
        assert_eq!(refused(w.allocate(0x1000, 0x1000)), "Exhausted");
        assert_eq!(refused(w.allocate(0x10, 1 << 63)), "Exhausted");
    }

    #[test]
    fn fixed_ranges_refuse_overlap() {
        let mut w = AddressWindow::new(0x1_0000, 0x1_0000).unwrap();
        w.allocate_at(0x1_4000, 0x1000).unwrap();
        assert_eq!(
            w.allocate_at(0x1_4800, 0x100),
            Err(AllocError::Overlap {
                addr: 0x1_4800,
                size: 0x100
            })
        );
        assert_eq!(refused(w.allocate_at(0x1_3800, 0x1000)), "Overlap");
        w.allocate_at(0x1_3000, 0x1000).unwrap();
        w.allocate_at(0x1_5000, 0x1000).unwrap();
        assert_eq!(refused(w.allocate_at(0xf000, 0x2000)), "OutsideWindow");
        assert_eq!(refused(w.allocate_at(0x1_f000, 0x2000)), "OutsideWindow");
        assert_eq!(refused(w.allocate_at(0x1_0000, 0)), "OutsideWindow");
        assert_eq!(w.allocate(0x1000, 0x1000), Ok(0x1_0000));
        assert_eq!(w.allocate(0x4000, 0x4000), Ok(0x1_8000));
    }

    #[test]
    fn bar_kinds_pick_windows() {
        let mut a = BarAllocator::new(
            AddressWindow::new(0xc000_0000, 0x1000_0000).unwrap(),
            Some(AddressWindow::new(0x100_0000_0000, 0x100_0000_0000).unwrap()),
            None,
        )
        .unwrap();
        let m64 = BarKind::Memory64 {
            prefetchable: false,
        };
        let m32 = BarKind::Memory32 {
            prefetchable: false,
        };
        assert_eq!(a.allocate(m64, 0x8_0000), Ok(0x100_0000_0000));
        assert_eq!(a.allocate(m32, 0x1000), Ok(0xc000_0000));
        assert_eq!(
            a.allocate(BarKind::Io, 0x20),
            Err(AllocError::NoWindow(BarKind::Io))
        );
        assert!(a.free(m64, 0x100_0000_0000));
        assert!(!a.free(BarKind::Io, 0));
        // Without a 64-bit window, 64-bit BARs go below 4 GiB.
        let mut a = BarAllocator::new(
            AddressWindow::new(0xc000_0000, 0x1000_0000).unwrap(),
            None,
            Some(AddressWindow::new(0x1000, 0x1000).unwrap()),
        )
        .unwrap();
        assert_eq!(a.allocate(m64, 0x8_0000), Ok(0xc000_0000));
        assert_eq!(a.allocate(BarKind::Io, 0x20), Ok(0x1000));
        assert!(a.free(m64, 0xc000_0000));
        assert!(BarAllocator::new(
            AddressWindow::new(0xf000_0000, 0x2000_0000).unwrap(),
            None,
            None
        )
        .is_err());
    }
}
