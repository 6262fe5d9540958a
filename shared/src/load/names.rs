//! Tensor names of each checkpoint format: the one place they are spelled.

use crate::model::{BlockWeight, WeightName};

/// Name of a weight in a GGUF file (llama.cpp's convention).
pub fn gguf(name: WeightName) -> String {
    match name {
        WeightName::TokenEmbedding => "token_embd.weight".into(),
        WeightName::FinalNorm => "output_norm.weight".into(),
        WeightName::OutputHead => "output.weight".into(),
        WeightName::Block(l, w) => {
            let suffix = match w {
                BlockWeight::AttnNorm => "attn_norm.weight",
                BlockWeight::Q => "attn_q.weight",
                BlockWeight::K => "attn_k.weight",
                BlockWeight::V => "attn_v.weight",
                BlockWeight::QBias => "attn_q.bias",
                BlockWeight::KBias => "attn_k.bias",
                BlockWeight::VBias => "attn_v.bias",
                BlockWeight::O => "attn_output.weight",
                BlockWeight::MlpNorm => "ffn_norm.weight",
                BlockWeight::Gate => "ffn_gate.weight",
                BlockWeight::Up => "ffn_up.weight",
                BlockWeight::Down => "ffn_down.weight",
            };
            format!("blk.{l}.{suffix}")
        }
    }
}

/// Name of a weight in a Hugging Face `*ForCausalLM` safetensors checkpoint.
pub fn hf(name: WeightName) -> String {
    match name {
        WeightName::TokenEmbedding => "model.embed_tokens.weight".into(),
        WeightName::FinalNorm => "model.norm.weight".into(),
        WeightName::OutputHead => "lm_head.weight".into(),
        WeightName::Block(l, w) => {
            let suffix = match w {
                BlockWeight::AttnNorm => "input_layernorm.weight",
                BlockWeight::Q => "self_attn.q_proj.weight",
                BlockWeight::K => "self_attn.k_proj.weight",
                BlockWeight::V => "self_attn.v_proj.weight",
                BlockWeight::QBias => "self_attn.q_proj.bias",
                BlockWeight::KBias => "self_attn.k_proj.bias",
                BlockWeight::VBias => "self_attn.v_proj.bias",
                BlockWeight::O => "self_attn.o_proj.weight",
                BlockWeight::MlpNorm => "post_attention_layernorm.weight",
                BlockWeight::Gate => "mlp.gate_proj.weight",
                BlockWeight::Up => "mlp.up_proj.weight",
                BlockWeight::Down => "mlp.down_proj.weight",
            };
            format!("model.layers.{l}.{suffix}")
        }
    }
}
