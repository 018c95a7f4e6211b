//! The supervisor of the supervised tiers, in files that are also the supervisor program's
//! (`main.rs`, built by `build.rs`): `core` only, no libc.

pub(crate) mod protocol;
#[cfg(pgroup_supervised)]
pub(crate) mod raw;
#[cfg(pgroup_supervised)]
pub(crate) mod run;
