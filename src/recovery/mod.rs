//! Recovery (补单): finding out what became of orders whose notification never came.
pub mod ask;
