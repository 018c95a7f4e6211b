//! The supervisor of the supervised tiers, in files that are also the supervisor program's
//! (`main.rs`, built by `build.rs`): `core` only, no libc.

// Without a supervisor (the portable backend, or no supervisor program for the target),
// only the records teardown reads are used.
#[cfg_attr(not(pgroup_supervised), allow(dead_code))]
pub(crate) mod protocol;
#[cfg(pgroup_supervised)]
pub(crate) mod raw;
#[cfg(pgroup_supervised)]
pub(crate) mod run;
