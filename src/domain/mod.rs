//! The facts every part of payhook speaks in, with no storage or web in them.

pub mod outcome;
