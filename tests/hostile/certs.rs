//! See main.rs. (area: certs)

#[allow(unused_imports)]
use crate::common::*;
