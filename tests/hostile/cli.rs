//! See main.rs. (area: cli)

#[allow(unused_imports)]
use crate::common::*;
