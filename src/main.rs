#![forbid(unsafe_code)]
fn main() {
    print!("{}", tracing_operator::api::crd_yaml().expect("crd"));
}
