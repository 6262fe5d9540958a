//! The Repair page in the browser: the core's AIRD run (METHOD §10) on the loaded model and
//! a copy of it compressed in the tab by a recipe, repaired toward the base direction and
//! judged against the two baselines, on the built-in prompt sets. The report is `.aird.json`,
//! as for `refusal-lens aird`, so the app draws both alike.

use js_sys::Function;
use refusal_core::runs::aird::{self, AirdRequest};
use refusal_core::runs::request_from_json;
use wasm_bindgen::prelude::*;

use crate::engine::{Engine, tab_study};
use crate::js_error;
use crate::tab_io::TabIo;

/// An AIRD request with the tab's defaults for what it leaves out.
pub fn tab_request() -> AirdRequest {
    AirdRequest {
        study: tab_study(),
        ..AirdRequest::default()
    }
}

#[wasm_bindgen]
impl Engine {
    /// Runs METHOD §10's AIRD study (request: JSON [`AirdRequest`], the direction given
    /// whole as `{vector, layer, position}`), calling `on_progress(stage, done, total)`; a
    /// `false` answer cancels. Resolves with the JSON of `.aird.json`.
    pub async fn aird(&self, request: String, on_progress: Function) -> Result<String, JsValue> {
        let request = request_from_json(&tab_request(), &request).map_err(js_error)?;
        let mut io = TabIo::new(self, &on_progress);
        let run = aird::run(
            &request,
            self.llama(),
            self.text(),
            self.info().clone(),
            &mut io,
        )
        .await
        .map_err(js_error)?;
        serde_json::to_string(&run.report).map_err(js_error)
    }
}
