//! Where the vocabulary size is recorded: `prepare` writes it into each split, the train phase into the
//! checkpoint, so the text tower is built without the tokenizer (which no phase mounts). A leaf module:
//! [`crate::context`] reads the size back, and the modules that write it depend on the context.

/// Key of the vocabulary size (i64, shape (1,)) in a prepared split.
pub const SPLIT_KEY: &str = "vocab_size";
/// Key of the vocabulary size (i64, shape (1,)) in a checkpoint; not a variable name.
pub const CHECKPOINT_KEY: &str = "harness.vocab_size";
