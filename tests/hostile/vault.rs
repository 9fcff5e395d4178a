//! See main.rs. (area: vault)

#[allow(unused_imports)]
use crate::common::*;
