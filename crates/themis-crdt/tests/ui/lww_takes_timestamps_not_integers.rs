// An LWW-Register orders writes by HLC timestamp; a raw integer is not one.
use themis_crdt::LwwRegister;

fn main() {
    let mut register = LwwRegister::new();
    register.set("value", 42u64);
}
