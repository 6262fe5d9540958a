//! The Directions page in the browser: the core's directions run (METHOD §3-6) on the built-in
//! prompt sets and the loaded [`Engine`]. The report has the fields of the CLI's
//! `selection.json` and `direction.json`, so the app draws both alike.

use js_sys::Function;
use refusal_core::runs::directions::{self, DirectionMeta, DirectionsRequest, SelectionReport};
use refusal_core::runs::request_from_json;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::engine::{Engine, EngineInfo, TAB_BATCH_SIZE};
use crate::js_error;
use crate::tab_io::TabIo;

/// A directions request with the tab's defaults for what it leaves out.
pub fn tab_request() -> DirectionsRequest {
    DirectionsRequest {
        batch_size: TAB_BATCH_SIZE,
        ..DirectionsRequest::default()
    }
}

/// `direction.json`, with the vector that `direction.safetensors` holds.
#[derive(Debug, Serialize)]
pub struct ChosenDirection {
    #[serde(flatten)]
    pub meta: DirectionMeta<EngineInfo>,
    pub vector: Vec<f32>,
}

/// What [`Engine::directions`] returns.
#[derive(Debug, Serialize)]
pub struct DirectionsReport {
    pub selection: SelectionReport<EngineInfo>,
    pub direction: Option<ChosenDirection>,
}

#[wasm_bindgen]
impl Engine {
    /// Runs METHOD §3-6 (request: JSON [`DirectionsRequest`], on the built-in sets), calling
    /// `on_progress(stage, done, total)`; a `false` answer cancels (rejecting with
    /// "cancelled"). Resolves with JSON [`DirectionsReport`].
    pub async fn directions(
        &self,
        request: String,
        on_progress: Function,
    ) -> Result<String, JsValue> {
        let request = request_from_json(&tab_request(), &request).map_err(js_error)?;
        let mut io = TabIo::new(self, &on_progress);
        let found = directions::run(&request, self.llama(), self.text(), &mut io)
            .await
            .map_err(js_error)?;
        let report = DirectionsReport {
            selection: found.report(self.info().clone()),
            direction: found
                .direction(self.info().clone())
                .map(|(meta, vector)| ChosenDirection { meta, vector }),
        };
        serde_json::to_string(&report).map_err(js_error)
    }
}
