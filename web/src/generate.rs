//! The Playground in the browser: the core's `generate` run (one prompt side by side under
//! each variant of METHOD §5, and by the compressed model and its AIRD repair) on the loaded
//! [`Engine`], streamed token by token. The report is the CLI's `generate.json`, so the app
//! shows and shares both alike.

use js_sys::Function;
use refusal_core::runs::generate::{self, GenerateRequest};
use refusal_core::runs::request_from_json;
use wasm_bindgen::prelude::*;

use crate::engine::{Engine, TAB_BATCH_SIZE};
use crate::js_error;
use crate::tab_io::TabIo;

/// A generate request with the tab's defaults for what it leaves out.
pub fn tab_request() -> GenerateRequest {
    GenerateRequest {
        batch_size: TAB_BATCH_SIZE,
        ..GenerateRequest::default()
    }
}

#[wasm_bindgen]
impl Engine {
    /// Generates every requested variant in turn (request: JSON [`GenerateRequest`]), calling
    /// `on_token(variant, text)` after each token (`text` may be empty while a character is
    /// incomplete). When it returns `false`, or a Promise of `false`, generation stops and
    /// this rejects with "cancelled". The compressed columns' models are made first (and kept
    /// for the next run), calling `on_progress(stage, done, total)` (`false` cancels).
    /// Resolves with JSON `generate.json`.
    pub async fn generate(
        &self,
        request: String,
        on_token: Function,
        on_progress: Function,
    ) -> Result<String, JsValue> {
        let request = request_from_json(&tab_request(), &request).map_err(js_error)?;
        let mut io = TabIo::new(self, &on_progress).streaming(&on_token);
        let report = generate::run(
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
