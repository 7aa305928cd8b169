pub mod linereader;
pub mod protocol;
pub mod validate;
