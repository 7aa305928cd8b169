mod mgmt;
mod state;
fn main() {}
