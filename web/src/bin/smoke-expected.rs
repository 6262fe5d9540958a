//! Native reference for the browser smoke test: writes the smoke model's logits, computed by the
//! native engine on the CPU (flex), as JSON for tests/browser/smoke.mjs.
//!
//!   cargo run -p refusal-web --bin smoke-expected [-- OUT.json]
//!
//! Default output: <workspace>/target/smoke-expected.json.

use std::path::PathBuf;

fn main() {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("smoke-expected.json")
        });
    let device = burn::tensor::Device::flex();
    let logits = refusal_web::smoke::smoke_logits(&device);
    let shape = logits.dims();
    let values: Vec<f32> = logits.into_data().try_into_vec_as().expect("f32 logits");
    assert!(
        values.iter().all(|v| v.is_finite()),
        "non-finite logits: {values:?}"
    );
    // `{:?}` prints the shortest f32 text that reads back exactly, which is also valid JSON.
    let list: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    let json = format!(
        "{{\"source\": \"native flex (refusal-web smoke-expected)\", \"shape\": [{}, {}], \"logits\": [{}]}}\n",
        shape[0],
        shape[1],
        list.join(", ")
    );
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("create output folder");
    }
    std::fs::write(&out, json).expect("write smoke-expected JSON");
    println!(
        "smoke-expected: {} logits [{}, {}] -> {}",
        values.len(),
        shape[0],
        shape[1],
        out.display()
    );
}
