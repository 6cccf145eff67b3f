//! The text tower: a BERT-family encoder with Hugging Face's parameter names, in its two layouts:
//! `BertModel` (e.g. all-MiniLM-L6-v2: `embeddings.token_type_embeddings`, `encoder.layer.N.attention.self.query`,
//! ...) and `DistilBertModel` (the reference's distilbert-base-uncased: `transformer.layer.N.attention.q_lin`,
//! ...). Both compute the same thing: embeddings + LayerNorm, then post-norm layers of self-attention and a
//! GELU feed-forward; they differ in names, token-type embeddings and where dropout sits.
//! The reference embeds a text as the [CLS] row of the last hidden state (no pooler).

use crate::layers::{layer_norm, merge_heads, normal_linear, split_heads, INIT_STD};
use crate::profile::Profile;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Which Hugging Face layout (and so which parameter names) the tower has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextArch {
    /// `BertModel` (`model_type: "bert"`).
    Bert,
    /// `DistilBertModel` (`model_type: "distilbert"`).
    DistilBert,
}

/// Sizes of a text tower.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// Layout and names.
    pub arch: TextArch,
    /// Rows of the word embedding.
    pub vocab_size: i64,
    /// Hidden width (DistilBERT: 768; MiniLM: 384).
    pub width: i64,
    /// Layers (DistilBERT: 6).
    pub layers: i64,
    /// Attention heads (DistilBERT: 12).
    pub heads: i64,
    /// Feed-forward size (DistilBERT: 3072).
    pub mlp: i64,
    /// Position embeddings (512).
    pub max_positions: i64,
    /// Token-type embeddings (BERT only; 2).
    pub type_vocab_size: i64,
    /// LayerNorm eps (1e-12).
    pub ln_eps: f64,
    /// Dropout on hidden states (0.1), active only in training.
    pub dropout: f64,
    /// Dropout on attention weights (0.1), active only in training.
    pub attention_dropout: f64,
}

impl TextConfig {
    /// The profile's DistilBERT-layout tower over `vocab_size` tokens (randomly initialised).
    pub fn from_profile(p: &Profile, vocab_size: i64) -> TextConfig {
        TextConfig {
            arch: TextArch::DistilBert,
            vocab_size,
            width: p.text_width,
            layers: p.text_layers,
            heads: p.text_heads,
            mlp: p.text_mlp,
            max_positions: 512,
            type_vocab_size: 0,
            ln_eps: 1e-12,
            dropout: 0.1,
            attention_dropout: 0.1,
        }
    }
}

#[derive(Debug)]
struct Layer {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    attn_norm: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    out_norm: nn::LayerNorm,
    arch: TextArch,
    heads: i64,
    dropout: f64,
    attention_dropout: f64,
}

impl Layer {
    fn new(p: nn::Path, cfg: &TextConfig) -> Layer {
        let d = cfg.width;
        let lin = |p: nn::Path, i, o| normal_linear(p, i, o);
        let (q, k, v, o, attn_norm, fc1, fc2, out_norm) = match cfg.arch {
            TextArch::Bert => {
                let s = &p / "attention" / "self";
                let ao = &p / "attention" / "output";
                (
                    lin(&s / "query", d, d),
                    lin(&s / "key", d, d),
                    lin(&s / "value", d, d),
                    lin(&ao / "dense", d, d),
                    layer_norm(&ao / "LayerNorm", d, cfg.ln_eps),
                    lin(&p / "intermediate" / "dense", d, cfg.mlp),
                    lin(&p / "output" / "dense", cfg.mlp, d),
                    layer_norm(&p / "output" / "LayerNorm", d, cfg.ln_eps),
                )
            }
            TextArch::DistilBert => {
                let a = &p / "attention";
                (
                    lin(&a / "q_lin", d, d),
                    lin(&a / "k_lin", d, d),
                    lin(&a / "v_lin", d, d),
                    lin(&a / "out_lin", d, d),
                    layer_norm(&p / "sa_layer_norm", d, cfg.ln_eps),
                    lin(&p / "ffn" / "lin1", d, cfg.mlp),
                    lin(&p / "ffn" / "lin2", cfg.mlp, d),
                    layer_norm(&p / "output_layer_norm", d, cfg.ln_eps),
                )
            }
        };
        Layer {
            q,
            k,
            v,
            o,
            attn_norm,
            fc1,
            fc2,
            out_norm,
            arch: cfg.arch,
            heads: cfg.heads,
            dropout: cfg.dropout,
            attention_dropout: cfg.attention_dropout,
        }
    }

    /// Post-norm: h = norm(x + attn(x)); norm(h + ffn(h)). `keep`: (B, 1, 1, L) bool, true for real tokens.
    fn forward_t(&self, x: &Tensor, keep: &Tensor, train: bool) -> Tensor {
        let (q, k, v) = (
            split_heads(&self.q.forward(x), self.heads),
            split_heads(&self.k.forward(x), self.heads),
            split_heads(&self.v.forward(x), self.heads),
        );
        let p = if train { self.attention_dropout } else { 0.0 };
        let a = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(keep), p, false, None, false);
        let mut a = self.o.forward(&merge_heads(&a));
        if self.arch == TextArch::Bert {
            a = a.dropout(self.dropout, train); // BertSelfOutput drops out; DistilBERT's attention does not
        }
        let h = self.attn_norm.forward(&(a + x));
        let f = self.fc2.forward(&self.fc1.forward(&h).gelu("none")).dropout(self.dropout, train);
        self.out_norm.forward(&(f + h))
    }
}

/// A BERT or DistilBERT encoder (no pooler, no LM head).
#[derive(Debug)]
pub struct TextTower {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: Option<nn::Embedding>,
    norm: nn::LayerNorm,
    layers: Vec<Layer>,
    /// The sizes it was built with.
    pub config: TextConfig,
}

impl TextTower {
    /// Builds the tower under `p` with BERT's initialisation (normal(0, 0.02) weights and embeddings).
    pub fn new(p: nn::Path, cfg: &TextConfig) -> TextTower {
        let d = cfg.width;
        let e = &p / "embeddings";
        let init = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn { mean: 0.0, stdev: INIT_STD },
            ..Default::default()
        };
        let (token_type_embeddings, layer_root) = match cfg.arch {
            TextArch::Bert => (
                Some(nn::embedding(&e / "token_type_embeddings", cfg.type_vocab_size, d, init)),
                &p / "encoder",
            ),
            TextArch::DistilBert => (None, &p / "transformer"),
        };
        TextTower {
            word_embeddings: nn::embedding(&e / "word_embeddings", cfg.vocab_size, d, init),
            position_embeddings: nn::embedding(&e / "position_embeddings", cfg.max_positions, d, init),
            token_type_embeddings,
            norm: layer_norm(&e / "LayerNorm", d, cfg.ln_eps),
            layers: (0..cfg.layers).map(|i| Layer::new(&layer_root / "layer" / i, cfg)).collect(),
            config: cfg.clone(),
        }
    }

    /// ids, mask (B, L) -> last hidden state (B, L, width). Dropout only when `train`.
    pub fn forward_t(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let l = ids.size()[1];
        let pos = Tensor::arange(l, (Kind::Int64, ids.device())).unsqueeze(0); // (1, L)
        let mut x = self.word_embeddings.forward(ids) + self.position_embeddings.forward(&pos);
        if let Some(tt) = &self.token_type_embeddings {
            x += tt.forward(&ids.zeros_like()); // one segment: token type 0
        }
        let mut x = self.norm.forward(&x).dropout(self.config.dropout, train);
        let keep = mask.ne(0).unsqueeze(1).unsqueeze(1); // (B, 1, 1, L)
        for layer in &self.layers {
            x = layer.forward_t(&x, &keep, train);
        }
        x
    }

    /// The [CLS] row of the last hidden state (B, width): what the reference embeds a text with.
    pub fn cls_t(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        self.forward_t(ids, mask, train).select(1, 0)
    }
}
