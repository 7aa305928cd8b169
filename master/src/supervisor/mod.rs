//! Supervision of the master's children: proxy workers and the app launcher. Both speak over
//! [`tako_ipc::Channel`], and every frame they send is checked by [`tako_ipc::validate`]
//! before the master keeps or acts on any of it: a child that breaks a rule is ended.

pub mod launcher;
pub mod spawn;
pub mod workers;
