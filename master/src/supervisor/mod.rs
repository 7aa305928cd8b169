//! Supervision of the master's children: proxy workers and the app launcher.

pub mod launcher;
pub mod spawn;
pub mod workers;
