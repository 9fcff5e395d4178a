//! See main.rs. (area: identity)

#[allow(unused_imports)]
use crate::common::*;
