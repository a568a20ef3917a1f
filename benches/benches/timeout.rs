// Being written.
fn main() {}
