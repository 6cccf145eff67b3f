//! One evaluation: a fresh deal of a split into two halves, each embedded by its own phase, scored
//! here. Used by every experiment (validation) and by `report --test` (the test split).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::contract::TrainPhase;
use super::{Runner, stopped};
use crate::data;
use crate::ledger::RunStatus;
use crate::sandbox::Job;
use crate::score::{self, Metrics};

/// What the two embed phases and the score of one evaluation gave, with their times in seconds.
pub struct Evaluation {
    pub embed_images: f64,
    pub embed_texts: f64,
    pub score: f64,
    /// The metrics, or why there are none (the status to record and the agent's message).
    pub result: std::result::Result<Metrics, (RunStatus, String)>,
}

impl Runner {
    /// Embeds the evaluation split `split` (`n` pairs) with `trainer` and the checkpoint `ckpt`, and
    /// scores it here. The split is dealt anew into two halves in fresh secret orders; images and texts
    /// are embedded by two sandboxed processes, one after the other, that share nothing they could
    /// signal through: the texts phase gets its own copy of the binary and the checkpoint, and every
    /// page of what both read (libtorch, the towers) is made resident before it starts
    /// (`sandbox::pagecache`). The halves and copies are removed afterwards. Also used by `report --test`.
    #[allow(clippy::too_many_arguments)]
    pub async fn evaluate(
        &self,
        trainer: &Path,
        split: &Path,
        n: usize,
        ckpt: &Path,
        run_dir: &Path,
        seed: u64,
        label: &str,
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Result<Evaluation> {
        let mut eval = Evaluation {
            embed_images: 0.0,
            embed_texts: 0.0,
            score: 0.0,
            result: Err((RunStatus::Crashed, String::new())),
        };
        // Outside both phases' writable folders; removed when the evaluation ends, however it ends.
        let private = run_dir.join("evaluation");
        let _ = std::fs::remove_dir_all(&private);
        let _cleanup = RemoveOnDrop(private.clone());
        let halves = data::deal_halves(split, n, &private.join("halves"))?;
        let copies = private.join("embed-texts");
        std::fs::create_dir_all(&copies)?;
        let (texts_trainer, texts_ckpt) = (copies.join("train"), copies.join("checkpoint.safetensors"));
        std::fs::copy(trainer, &texts_trainer).context("copy the trainer for embed-texts")?;
        std::fs::copy(ckpt, &texts_ckpt).context("copy the checkpoint for embed-texts")?;
        // What both phases read, mounted in each and reset between them: computed once. A backend that
        // isolates nothing (`none`) has no boundary to keep, so nothing to reset.
        let isolated = self.sandbox.isolates();
        let shared = if isolated { self.embed_shared()? } else { vec![] };
        let mut files = vec![];
        let phases = [
            (TrainPhase::EmbedImages, trainer, halves.images.as_path(), ckpt),
            (TrainPhase::EmbedTexts, texts_trainer.as_path(), halves.texts.as_path(), texts_ckpt.as_path()),
        ];
        for (embed, trainer, input, ckpt) in phases {
            let name = embed.as_str();
            let _ = phase.send(format!("embedding ({name}){label}"));
            let dir = run_dir.join(name);
            let _ = std::fs::remove_dir_all(&dir);
            let job = self.embed_job(embed, trainer, input, ckpt, &shared, &dir, seed)?;
            let r = if name == "embed-images" && isolated {
                // Whatever it left in the page cache must not reach embed-texts.
                crate::sandbox::pagecache::run_then_reset(self.sandbox.as_ref(), &job, &shared, cancel).await?
            } else {
                self.sandbox.run(&job, cancel).await?
            };
            let secs = r.wall.as_secs_f64();
            *(if name == "embed-images" { &mut eval.embed_images } else { &mut eval.embed_texts }) = secs;
            if let Some(stop) = stopped(&r, RunStatus::Crashed) {
                // Only the status: embed output could carry validation data.
                let message = format!(
                    "{name}{label} {}; its output is withheld (it may contain evaluation data). Check encode_image/encode_text in train.rs.",
                    r.describe()
                );
                eval.result = Err((stop, message));
                return Ok(eval);
            }
            files.push(dir.join("embeddings.safetensors"));
        }

        let _ = phase.send(format!("scoring{label}"));
        let t = Instant::now();
        let scored = score::score_halves(&halves.pairing, n, &files[0], &files[1]);
        eval.score = t.elapsed().as_secs_f64();
        eval.result = scored.map_err(|e| {
            let message = format!("the embeddings{label} cannot be scored: {e:#}. This counts as a crash.");
            (RunStatus::InvalidOutput, message)
        });
        Ok(eval)
    }
}

/// Removes a folder when dropped (the evaluation's private inputs, whatever path the code takes).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Runner {
    /// The sandboxed job of an embed phase (`embed-images` or `embed-texts`) in `dir` (created): `trainer`
    /// embeds `input`, one shuffled half of an evaluation split, with the checkpoint `ckpt`. It mounts
    /// those and `shared` ([`Runner::embed_shared`]) and nothing else: never the other half, never the
    /// pairing.
    #[allow(clippy::too_many_arguments)]
    fn embed_job(
        &self,
        phase: TrainPhase,
        trainer: &Path,
        input: &Path,
        ckpt: &Path,
        shared: &[PathBuf],
        dir: &Path,
        seed: u64,
    ) -> Result<Job> {
        std::fs::create_dir_all(dir)?;
        let env = self.run_env(phase, input, dir, Some(ckpt), seed)?;
        let t = Duration::from_secs(self.config.experiment.embed_timeout_seconds);
        let mut job = self.job(phase.as_str(), trainer.to_path_buf(), vec![], env, dir, (t, 1 << 30));
        // Not the host's /usr nor the Python environment: only what the two embed phases must share,
        // which is reset between them (sandbox::pagecache).
        job.host_system = false;
        job.read_only = [trainer, input, ckpt].iter().map(|p| p.to_path_buf()).collect();
        job.read_only.extend(shared.iter().cloned());
        Ok(job)
    }

    /// What both embed phases read: libtorch's runtime view and the pretrained towers.
    fn embed_shared(&self) -> Result<Vec<PathBuf>> {
        let mut shared = crate::sandbox::pagecache::runtime_view(&self.pyenv.torch_lib()?)?;
        let (image, text) = self.towers()?;
        shared.extend(image);
        shared.extend(text);
        Ok(shared)
    }
}
