//! The environment contract between the server and the trainer: the `AR_*` variables of one phase of
//! `train` (trainer/CONTRACT.md), field for field what the trainer's `context::Context::from_env`
//! reads. The only place the server writes them, whichever backend runs the phase.

use std::path::{Path, PathBuf};

use crate::config::Device;

/// Which phase of `train` a process runs (`AR_PHASE`; the trainer's `context::Phase`). The trainer's
/// `step-check` phase is the parity test's, never run by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainPhase {
    Train,
    EmbedImages,
    EmbedTexts,
}

impl TrainPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainPhase::Train => "train",
            TrainPhase::EmbedImages => "embed-images",
            TrainPhase::EmbedTexts => "embed-texts",
        }
    }
}

/// The `AR_*` environment of one phase.
#[derive(Debug, Clone)]
pub struct TrainerEnv {
    /// `AR_PHASE`.
    pub phase: TrainPhase,
    /// `AR_PROFILE`: `tests`, `cpu` or `gpu`.
    pub profile: String,
    /// `AR_DATA`: the one data file of the phase.
    pub data: PathBuf,
    /// `AR_OUT`: the only writable folder.
    pub out: PathBuf,
    /// `AR_CHECKPOINT`: the train phase's checkpoint (embed phases only).
    pub checkpoint: Option<PathBuf>,
    /// `AR_BUDGET_S`: the wall-clock training budget in seconds.
    pub budget_s: u64,
    /// `AR_SEED`.
    pub seed: u64,
    /// `AR_DEVICE`: `auto`, `cpu` or `cuda`, as configured (the trainer resolves `auto`).
    pub device: Device,
    /// `AR_IMAGE_TOWER`, `AR_TEXT_TOWER`: the pretrained towers, when configured.
    pub image_tower: Option<PathBuf>,
    pub text_tower: Option<PathBuf>,
}

impl TrainerEnv {
    /// The variables, in a fixed order; an unset optional is left out (the trainer reads it as unset).
    pub fn vars(&self) -> Vec<(String, String)> {
        let path = |p: &Path| p.display().to_string();
        let mut env = vec![
            ("AR_PHASE".to_string(), self.phase.as_str().to_string()),
            ("AR_PROFILE".into(), self.profile.clone()),
            ("AR_DATA".into(), path(&self.data)),
            ("AR_OUT".into(), path(&self.out)),
            ("AR_BUDGET_S".into(), self.budget_s.to_string()),
            ("AR_SEED".into(), self.seed.to_string()),
            ("AR_DEVICE".into(), self.device.as_str().into()),
        ];
        let optional = [
            ("AR_CHECKPOINT", &self.checkpoint),
            ("AR_IMAGE_TOWER", &self.image_tower),
            ("AR_TEXT_TOWER", &self.text_tower),
        ];
        env.extend(optional.into_iter().filter_map(|(k, v)| v.as_deref().map(|p| (k.to_string(), path(p)))));
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_the_trainer_reads_is_set_and_unset_options_are_absent() {
        let mut e = TrainerEnv {
            phase: TrainPhase::EmbedTexts,
            profile: "tests".into(),
            data: "/d/texts.safetensors".into(),
            out: "/o".into(),
            checkpoint: Some("/c/checkpoint.safetensors".into()),
            budget_s: 60,
            seed: 7,
            device: Device::Auto,
            image_tower: None,
            text_tower: Some("/t".into()),
        };
        let get = |e: &TrainerEnv, k: &str| e.vars().into_iter().find(|(n, _)| n == k).map(|(_, v)| v);
        assert_eq!(get(&e, "AR_PHASE").as_deref(), Some("embed-texts"));
        assert_eq!(get(&e, "AR_BUDGET_S").as_deref(), Some("60"));
        assert_eq!(get(&e, "AR_CHECKPOINT").as_deref(), Some("/c/checkpoint.safetensors"));
        assert_eq!(get(&e, "AR_TEXT_TOWER").as_deref(), Some("/t"));
        assert_eq!(get(&e, "AR_IMAGE_TOWER"), None);
        e.checkpoint = None;
        assert_eq!(get(&e, "AR_CHECKPOINT"), None);
        assert_eq!(e.vars().len(), 8);
    }
}
