//! The AFL++ harness: `fuzz-afl TARGET` feeds each input AFL makes to that target
//! (scripts/fuzz builds and runs it).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = fuzz::target(&name) else {
        let names: Vec<_> = fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("usage: fuzz-afl TARGET, one of {}", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| (target.run)(data));
}
