//! What a core run asks of a tab ([`RunIo`]): progress through the page's callback (whose
//! `false` answer cancels), the built-in prompt sets and inline lists only, models made by
//! recipes from the loaded one and kept for the next run, completions streamed to the page's
//! token callback, notes in the console.

use std::ops::ControlFlow;

use js_sys::{Function, Promise};
use refusal_core::compress::{Method, Summary};
use refusal_core::load::TextAssets;
use refusal_core::model::Llama;
use refusal_core::pipeline::Progress;
use refusal_core::refusal::Prompt;
use refusal_core::refusal::aird::{AirdFit, AirdSettings};
use refusal_core::runs::aird::GivenDirection;
use refusal_core::runs::compress::Calibration;
use refusal_core::runs::generate::Streamed;
use refusal_core::runs::{LocalFuture, RunError, RunIo};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::engine::Engine;
use crate::js_progress;

/// A core run's I/O in the tab.
pub struct TabIo<'a> {
    engine: &'a Engine,
    on_progress: &'a Function,
    /// `on_token(variant, text)`, for runs that stream completions.
    on_token: Option<&'a Function>,
}

impl<'a> TabIo<'a> {
    pub fn new(engine: &'a Engine, on_progress: &'a Function) -> TabIo<'a> {
        TabIo {
            engine,
            on_progress,
            on_token: None,
        }
    }

    /// Also streams completions: `on_token(variant, text)` after each token; `false`, or a
    /// Promise of `false`, cancels.
    pub fn streaming(self, on_token: &'a Function) -> TabIo<'a> {
        TabIo {
            on_token: Some(on_token),
            ..self
        }
    }
}

impl RunIo for TabIo<'_> {
    fn progress(&mut self, progress: Progress) -> ControlFlow<()> {
        js_progress(self.on_progress)(progress)
    }

    fn note(&mut self, message: &str) {
        web_sys::console::info_1(&message.into());
    }

    fn read_prompts(&mut self, name: &str) -> Result<Vec<Prompt>, RunError> {
        Err(RunError::Input(format!(
            "`{name}`: a tab has only the built-in prompt sets (builtin:harmful, builtin:harmless) and inline lists"
        )))
    }

    fn open_model(&mut self, spec: &str) -> Result<Llama, RunError> {
        Err(RunError::Input(format!(
            "`{spec}`: in this browser the compressed model is made by a recipe such as \
             rtn:4:128 or wanda:0.5"
        )))
    }

    fn compress<'b>(
        &'b mut self,
        base: &'b Llama,
        method: Method,
        calibration: &'b Calibration,
        batch_size: usize,
    ) -> LocalFuture<'b, Result<(Llama, Summary), RunError>> {
        Box::pin(async move {
            self.engine
                .kept()
                .compressed(
                    base,
                    method,
                    calibration,
                    batch_size,
                    &mut js_progress(self.on_progress),
                )
                .await
        })
    }

    fn repair<'b>(
        &'b mut self,
        base: &'b Llama,
        compressed: &'b Llama,
        text: &'b TextAssets,
        direction: &'b GivenDirection,
        settings: AirdSettings,
        fit_prompts: usize,
    ) -> LocalFuture<'b, Result<(Llama, AirdFit), RunError>> {
        Box::pin(async move {
            self.engine
                .kept()
                .repaired(
                    base,
                    compressed,
                    text,
                    direction,
                    settings,
                    fit_prompts,
                    &mut js_progress(self.on_progress),
                )
                .await
        })
    }

    fn streamed<'b>(&'b mut self, completion: Streamed<'b>) -> LocalFuture<'b, ControlFlow<()>> {
        let on_token = self.on_token;
        Box::pin(async move {
            let (Some(on_token), Streamed::Token { variant, text }) = (on_token, completion) else {
                return ControlFlow::Continue(());
            };
            match keep_going(on_token, variant.name(), text).await {
                Ok(true) => ControlFlow::Continue(()),
                Ok(false) => ControlFlow::Break(()),
                Err(e) => {
                    // A callback that throws cannot be shown tokens any more: stop the run.
                    web_sys::console::error_2(&"the token callback failed:".into(), &e);
                    ControlFlow::Break(())
                }
            }
        })
    }
}

/// Calls the token callback; `false` (or a Promise of it) asks to stop.
async fn keep_going(on_token: &Function, variant: &str, piece: &str) -> Result<bool, JsValue> {
    let answer = on_token.call2(&JsValue::NULL, &variant.into(), &piece.into())?;
    let answer = match answer.dyn_into::<Promise>() {
        Ok(promise) => JsFuture::from(promise).await?,
        Err(value) => value,
    };
    Ok(answer.as_bool() != Some(false))
}
