//! Test infrastructure shipped behind the `conformance` feature: the suite every backend
//! runs ([`conformance`]) and the private servers the fault tests start ([`servers`]).

pub mod conformance;
pub mod servers;
