//! [`Pgid`]: a process-group id that cannot name a dangerous target.

use std::fmt;
use std::io;
use std::num::NonZeroI32;

/// The largest pid Linux can ever hand out, plus one (`PID_MAX_LIMIT` on 64-bit kernels,
/// 2<sup>22</sup>). `/proc/sys/kernel/pid_max` cannot be raised above it, so no process, and
/// so no process group, has an id at or above this value.
///
/// # Examples
///
/// ```
/// assert!(pgroup::Pgid::try_from(pgroup::PID_MAX_LIMIT - 1).is_ok());
/// assert!(pgroup::Pgid::try_from(pgroup::PID_MAX_LIMIT).is_err());
/// ```
pub const PID_MAX_LIMIT: i32 = 4_194_304;

/// A process-group id that is greater than 1 and below [`PID_MAX_LIMIT`], by construction.
///
/// `killpg(2)` gives the small numbers special meanings that are never what a test wants:
/// 0 is the caller's own group and 1 turns into `kill(-1)`, every process the caller may signal.
/// Negative values are errors at best. A `Pgid` cannot hold any of them, so code that has one
/// cannot make those mistakes, and code that has only a raw number must go through
/// [`TryFrom`], which says exactly what was wrong with it.
///
/// There is no `From<u32>`, and the crate never uses `as` between id types: a `u32` above
/// `i32::MAX` (a pid that came through a `u32 as i32` round trip, say) is an error, never a
/// negative number.
///
/// # Examples
///
/// ```
/// use pgroup::Pgid;
///
/// let pgid = Pgid::try_from(4242_i32)?;
/// assert_eq!(pgid.as_raw(), 4242);
/// assert_eq!(pgid.to_string(), "4242");
///
/// assert!(Pgid::try_from(0_i32).is_err()); // the caller's own group
/// assert!(Pgid::try_from(1_i32).is_err()); // kill(-1): everything
/// assert!(Pgid::try_from(u32::MAX).is_err()); // would wrap to -1 through `as i32`
/// # Ok::<(), pgroup::InvalidPgid>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pgid(NonZeroI32);

impl Pgid {
    /// The id as the `pid_t` value the kernel takes.
    ///
    /// # Examples
    ///
    /// ```
    /// let pgid = pgroup::Pgid::try_from(77_u32)?;
    /// assert_eq!(pgid.as_raw(), 77);
    /// # Ok::<(), pgroup::InvalidPgid>(())
    /// ```
    #[must_use]
    pub const fn as_raw(self) -> i32 {
        self.0.get()
    }

    fn from_wide(raw: i64) -> Result<Self, InvalidPgid> {
        let kind = if raw <= 1 {
            InvalidPgidKind::AtMostOne
        } else if raw >= i64::from(PID_MAX_LIMIT) {
            InvalidPgidKind::AbovePidMax
        } else {
            let value = i32::try_from(raw).ok().and_then(NonZeroI32::new);
            // Both always succeed for 1 < raw < PID_MAX_LIMIT; the fallback keeps us panic-free.
            return value.map(Pgid).ok_or(InvalidPgid {
                value: raw,
                kind: InvalidPgidKind::AbovePidMax,
            });
        };
        Err(InvalidPgid { value: raw, kind })
    }
}

impl TryFrom<i32> for Pgid {
    type Error = InvalidPgid;

    /// # Errors
    ///
    /// [`InvalidPgid`] for values at or below 1 and at or above [`PID_MAX_LIMIT`].
    fn try_from(raw: i32) -> Result<Self, Self::Error> {
        Pgid::from_wide(i64::from(raw))
    }
}

impl TryFrom<u32> for Pgid {
    type Error = InvalidPgid;

    /// Converts a pid as std hands it out ([`std::process::Child::id`]).
    ///
    /// # Errors
    ///
    /// [`InvalidPgid`] for 0, 1 and values at or above [`PID_MAX_LIMIT`], which includes
    /// everything above `i32::MAX` (never wrapped into a negative number).
    fn try_from(raw: u32) -> Result<Self, Self::Error> {
        Pgid::from_wide(i64::from(raw))
    }
}

impl From<Pgid> for i32 {
    fn from(pgid: Pgid) -> i32 {
        pgid.as_raw()
    }
}

/// The id as std's pids are typed ([`std::process::Child::id`]); exact, since a `Pgid` is
/// always above 1.
///
/// # Examples
///
/// ```
/// let pgid = pgroup::Pgid::try_from(77_i32)?;
/// assert_eq!(u32::from(pgid), 77);
/// # Ok::<(), pgroup::InvalidPgid>(())
/// ```
impl From<Pgid> for u32 {
    fn from(pgid: Pgid) -> u32 {
        pgid.as_raw().unsigned_abs()
    }
}

impl fmt::Debug for Pgid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pgid").field(&self.as_raw()).finish()
    }
}

impl fmt::Display for Pgid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_raw(), f)
    }
}

/// A number that is not a valid [`Pgid`], and why.
///
/// It converts into [`std::io::Error`] of kind [`InvalidInput`](io::ErrorKind::InvalidInput),
/// so it can be returned with `?` from functions that return `io::Result`.
///
/// # Examples
///
/// ```
/// let err = pgroup::Pgid::try_from(-5_i32).unwrap_err();
/// assert_eq!(err.value(), -5);
/// assert!(err.to_string().contains("-5"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPgid {
    value: i64,
    kind: InvalidPgidKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvalidPgidKind {
    AtMostOne,
    AbovePidMax,
}

impl InvalidPgid {
    /// The number that was refused, widened so that no input is lost or wrapped.
    ///
    /// # Examples
    ///
    /// ```
    /// let err = pgroup::Pgid::try_from(u32::MAX).unwrap_err();
    /// assert_eq!(err.value(), 4_294_967_295);
    /// ```
    #[must_use]
    pub const fn value(&self) -> i64 {
        self.value
    }

    /// Whether the number was at or below 1 (`false`: it was too large to be any pid).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(pgroup::Pgid::try_from(1_i32).unwrap_err().is_at_most_one());
    /// assert!(!pgroup::Pgid::try_from(i32::MAX).unwrap_err().is_at_most_one());
    /// ```
    #[must_use]
    pub const fn is_at_most_one(&self) -> bool {
        matches!(self.kind, InvalidPgidKind::AtMostOne)
    }
}

impl fmt::Display for InvalidPgid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.value;
        match self.kind {
            InvalidPgidKind::AtMostOne => {
                let meaning = match value {
                    0 => "killpg(0) signals the caller's own process group",
                    1 => "killpg(1) becomes kill(-1), which signals every process the caller may signal",
                    _ => "negative ids are never process groups",
                };
                write!(
                    f,
                    "invalid process-group id {value}: it must be greater than 1 ({meaning})"
                )
            }
            InvalidPgidKind::AbovePidMax => write!(
                f,
                "invalid process-group id {value}: it must be below {PID_MAX_LIMIT}, the largest \
                 pid Linux can hand out (a u32 above i32::MAX is never wrapped into a negative id)"
            ),
        }
    }
}

impl std::error::Error for InvalidPgid {}

impl From<InvalidPgid> for io::Error {
    fn from(err: InvalidPgid) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, err)
    }
}
