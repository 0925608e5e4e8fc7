//! Test infrastructure shipped behind the `conformance` feature: the suite every backend
//! runs ([`conformance`]) and the private servers the fault tests start ([`servers`]), and a proxy that puts the
//! network's faults between a client and its store ([`proxy`]).

pub mod conformance;
pub mod proxy;
pub mod servers;
