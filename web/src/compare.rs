//! The Compressed vs base page in the browser: the core's compare run (METHOD §9) on the
//! loaded model and compressed copies of it made in the tab by recipes, on the built-in
//! prompt sets, optionally with the AIRD repair of each (METHOD §10). The report is
//! `compare.json`, as for `refusal-lens compare`, so the app draws both alike.

use js_sys::Function;
use refusal_core::runs::compare::{self, CompareRequest};
use refusal_core::runs::request_from_json;
use wasm_bindgen::prelude::*;

use crate::engine::{Engine, tab_study};
use crate::js_error;
use crate::tab_io::TabIo;

/// A compare request with the tab's defaults for what it leaves out.
pub fn tab_request() -> CompareRequest {
    CompareRequest {
        study: tab_study(),
        ..CompareRequest::default()
    }
}

#[wasm_bindgen]
impl Engine {
    /// Runs METHOD §9 (request: JSON [`CompareRequest`]) on the loaded model and each recipe,
    /// calling `on_progress(stage, done, total)`; a `false` answer cancels. Resolves with the
    /// JSON of `compare.json`.
    pub async fn compare(&self, request: String, on_progress: Function) -> Result<String, JsValue> {
        let request = request_from_json(&tab_request(), &request).map_err(js_error)?;
        let mut io = TabIo::new(self, &on_progress);
        let report = compare::run(
            &request,
            self.llama(),
            self.text(),
            self.info().clone(),
            &mut io,
        )
        .await
        .map_err(js_error)?;
        serde_json::to_string(&report).map_err(js_error)
    }
}
